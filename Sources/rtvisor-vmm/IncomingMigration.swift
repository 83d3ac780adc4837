import CDaemonSupport
import Logging
import Posix
import SystemPackage
import VMM
import VMMInterface
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `--incoming`: the target's side of a live migration before the machine exists: the stream
/// accepted, the source's hello and configuration read (docs/migration.md).
enum IncomingMigration {
    struct Opened {
        let channel: MigrationChannel
        let config: MigrationConfig
        /// A same-host upgrade's RAM and taps.
        var handedOver: HandedOver? = nil
    }

    /// `configFile`: rtvisord read the hello and the configuration already and saved the latter.
    static func open(_ address: String, configFile: String?, logger: Logger) throws -> Opened {
        let parsed = try MigrationAddress(parsing: address)
        let socket: Int32
        switch parsed {
        case let .fd(n): socket = n
        case let .unix(path): socket = try acceptOne(cdaemon_listen_unix(path, 1, 0o600), address, removing: path, logger: logger)
        case let .tcp(host, port): socket = try acceptOne(cdaemon_listen_tcp(host, port), address, removing: nil, logger: logger)
        }
        let channel = MigrationChannel(socket: FileDescriptor(rawValue: socket))
        if let configFile {
            let fd = try FileDescriptor.open(configFile, .readOnly, options: [.closeOnExec])
            defer { try? fd.close() }
            let config = try JSONDecoder().decode(MigrationConfig.self, from: Data(try readToEnd(fd.rawValue)))
            logger.notice("incoming migration of \(config.header.vm) from \(config.sourceHost) on \(address) (handed over by the caller)")
            return Opened(channel: channel, config: config)
        }
        guard case let .hello(version, sourceVersion) = try channel.receive() else { throw MigrationStreamError("the source did not start with hello") }
        guard version == MigrationMessage.version else {
            try? channel.send(.refused("migration protocol \(version); this VMM speaks \(MigrationMessage.version)"))
            throw MigrationStreamError("migration protocol \(version) from rtvisor \(sourceVersion); this VMM speaks \(MigrationMessage.version)")
        }
        guard case let .config(config) = try channel.receive() else { throw MigrationStreamError("the source sent no configuration") }
        logger.notice("incoming migration of \(config.header.vm) from \(config.sourceHost) (rtvisor \(sourceVersion)) on \(address)\(config.handover == true ? ", a same-host handover" : "")")
        guard config.handover == true else { return Opened(channel: channel, config: config) }
        do {
            return Opened(channel: channel, config: config, handedOver: try receiveHandover(channel))
        } catch {
            try? channel.send(.refused("\(error)"))
            throw error
        }
    }

    /// The `handover` frame that follows a same-host upgrade's configuration, with its descriptors.
    static func receiveHandover(_ channel: MigrationChannel) throws -> HandedOver {
        guard case let .handover(manifest) = try channel.receive() else { throw MigrationStreamError("a same-host handover without its handover frame") }
        return try HandedOver(manifest, files: channel.takeFiles())
    }

    private static func acceptOne(_ listener: Int32, _ address: String, removing path: String?, logger: Logger) throws -> Int32 {
        guard listener >= 0 else { throw MigrationStreamError("--incoming \(address): \(errnoMessage())") }
        defer {
            close(listener)
            if let path { unlink(path) }
        }
        logger.info("waiting for the migration stream on \(address)")
        while true {
            let fd = accept(listener, nil, nil)
            if fd >= 0 { _ = cdaemon_set_cloexec(fd); return fd }
            if errno != EINTR { throw MigrationStreamError("--incoming \(address): accept: \(errnoMessage())") }
        }
    }
}
