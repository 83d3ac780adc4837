import APIModels
import Config
import Daemon
import Foundation
import Testing
import TestSupport

@Suite struct CloneNamingTests {
    @Test func clonesAreNumberedAfterThePrefix() throws {
        #expect(try ClonePlan.names(origin: "web", prefix: nil, count: 3) == ["web-clone1", "web-clone2", "web-clone3"])
        #expect(try ClonePlan.names(origin: "web", prefix: "w", count: 2) == ["w1", "w2"])
        #expect(try ClonePlan.names(origin: "web", prefix: nil, count: 64).last == "web-clone64")
    }

    @Test func countAndNamesFollowTheDefinitionRules() {
        func refusal(_ prefix: String?, _ count: Int) -> String? {
            do { _ = try ClonePlan.names(origin: "web", prefix: prefix, count: count); return nil } catch { return error.description }
        }
        #expect(refusal(nil, 0) == "count must be 1–64, got 0")
        #expect(refusal(nil, 65) == "count must be 1–64, got 65")
        #expect(refusal("bad name", 1) == "clone name \"bad name1\" is not a VM name (1–64 letters, digits, '-' and '_'): choose another prefix")
        #expect(refusal("a/b", 1) != nil)
        // 63 characters + "1" fits, + "10" does not.
        let long = String(repeating: "x", count: 63)
        #expect(refusal(long, 9) == nil)
        #expect(refusal(long, 10) == "clone name \"\(long)10\" is not a VM name (1–64 letters, digits, '-' and '_'): choose another prefix")
    }

    /// 64 clones of a VM with two NICs: every MAC locally administered, unicast and unique; every
    /// tap a valid interface name, unique, none the host already has; the same name gives the
    /// same MAC again.
    @Test func macsAndTapsAreValidAndUnique() throws {
        let names = try ClonePlan.names(origin: "web", prefix: nil, count: 64)
        var taken: Set<String> = ["eth0", "lo", "tap0"]
        var macs: Set<[UInt8]> = [ClonePlan.mac(vm: "web", index: 0), ClonePlan.mac(vm: "web", index: 1)]
        var taps: Set<String> = []
        for name in names {
            for nic in 0..<2 {
                let mac = ClonePlan.mac(vm: name, index: nic)
                #expect(mac.count == 6 && mac[0] & 0x02 == 0x02 && mac[0] & 0x01 == 0, "\(NetSettings.format(mac)) is not locally administered unicast")
                #expect(macs.insert(mac).inserted, "duplicate MAC \(NetSettings.format(mac))")
                #expect(ClonePlan.mac(vm: name, index: nic) == mac)
                let tap = ClonePlan.tap(vm: name, index: nic, taken: taken)
                #expect(tap.utf8.count <= 15 && tap.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0)) }, "\(tap)")
                #expect(!taken.contains(tap))
                taken.insert(tap)
                taps.insert(tap)
            }
        }
        #expect(taps.count == 128)
        // A tap that is taken (another VM's, or the host's) is not handed out again.
        let first = ClonePlan.tap(vm: "web-clone1", index: 0, taken: [])
        let second = ClonePlan.tap(vm: "web-clone1", index: 0, taken: [first])
        #expect(first != second && second.utf8.count <= 15)
        #expect(ClonePlan.diskPath(clones: "/var/lib/rtvisor/clones", vm: "web-clone1", index: 1, source: "/images/web.img")
            == "/var/lib/rtvisor/clones/web-clone1/1-web.img")
    }
}

@Suite struct DiskCopyTests {
    /// "MOUNTPOINT TYPE" of the longest mount point in /proc/self/mounts that contains `path`.
    static func fileSystem(of path: String) -> String {
        let text = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        var best: (point: String, type: String) = ("?", "?")
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count > 2, path.hasPrefix(fields[1]), best.point == "?" || fields[1].count >= best.point.count else { continue }
            best = (fields[1], fields[2])
        }
        return "\(best.point) \(best.type)"
    }

    /// Reflink where this host's file system has it, else a copy of the data extents: either
    /// way the same bytes, the holes kept. Which one happened here is printed.
    @Test func aDiskIsReflinkedOrCopiedWithItsHoles() throws {
        let dir = try makeTemporaryDirectory("diskcopy")
        let source = dir + "/disk.img", copy = dir + "/copy.img"
        FileManager.default.createFile(atPath: source, contents: nil)
        let h = try #require(FileHandle(forWritingAtPath: source))
        try h.truncate(atOffset: 64 << 20)
        try h.seek(toOffset: 0)
        try h.write(contentsOf: Data(repeating: 0x5A, count: 8192))
        try h.seek(toOffset: 40 << 20)
        try h.write(contentsOf: Data("end of the data".utf8))
        try h.close()
        let mode = try DiskCopy.copy(from: source, to: copy)
        print("DiskCopy on this host (\(dir) on \(Self.fileSystem(of: dir))): \(mode.rawValue)")
        #expect(mode == .reflink || mode == .copy)
        #expect(try Data(contentsOf: URL(fileURLWithPath: copy)) == Data(contentsOf: URL(fileURLWithPath: source)))
        var st = stat()
        #expect(stat(copy, &st) == 0 && st.st_size == 64 << 20 && st.st_mode & 0o777 == 0o600)
        // Sparse stays sparse: far less than 64 MiB allocated.
        #expect(Int(st.st_blocks) * 512 < 8 << 20, "\(Int(st.st_blocks) * 512) bytes allocated for the copy")
        // Never over an existing file.
        do { _ = try DiskCopy.copy(from: source, to: copy); Issue.record("copied over an existing file") } catch {
            #expect(error.description.contains("cannot create \(copy): File exists"))
        }
        do { _ = try DiskCopy.copy(from: dir, to: dir + "/x"); Issue.record("copied a directory") } catch {
            #expect(error.description == "\(dir) is not a regular file: only image files can be copied for a clone")
            #expect(!FileManager.default.fileExists(atPath: dir + "/x"))
        }
    }
}

@Suite struct DefinitionJSONTests {
    @Test func pathsBecomeAbsoluteAndUnknownFieldsStay() throws {
        let text = #"{"name": "web", "memory_mib": 32, "kernel": "k.elf", "initrd": "/abs/i", "disks": [{"path": "d.img", "read_only": true}], "#
            + #""nets": [{"tap": "tap0"}], "x_note": {"keep": [1, 2.5, null, "a\"b"]}}"#
        var json = try DefinitionJSON(Array(text.utf8), file: "/snap/definition.json")
        json.makePathsAbsolute(base: "/snap")
        json.rename(to: "web-clone1")
        json.setNet(0, tap: "rtv0123456789", mac: [2, 0, 0, 0, 0, 1])
        json.setDiskPath(0, "/var/lib/rtvisor/clones/web-clone1/0-d.img")
        let out = String(decoding: json.bytes, as: UTF8.self)
        let again = try #require(try JSONSerialization.jsonObject(with: Data(json.bytes)) as? [String: Any])
        #expect(again["name"] as? String == "web-clone1")
        #expect(again["kernel"] as? String == "/snap/k.elf" && again["initrd"] as? String == "/abs/i")
        let disk = try #require((again["disks"] as? [[String: Any]])?.first)
        #expect(disk["path"] as? String == "/var/lib/rtvisor/clones/web-clone1/0-d.img" && disk["read_only"] as? Bool == true)
        let net = try #require((again["nets"] as? [[String: Any]])?.first)
        #expect(net["tap"] as? String == "rtv0123456789" && net["mac"] as? String == "02:00:00:00:00:01")
        #expect(out.contains(#""x_note": {"#) && out.contains(#""a\"b""#) && out.contains("2.5") && out.contains("null"))
        // Sorted keys, indented: a file meant to be read.
        #expect(out.hasPrefix("{\n  \"disks\": [\n"))
        #expect(try DefinitionJSON(json.bytes, file: "again") == (try DefinitionJSON(json.bytes, file: "again")))
    }
}
