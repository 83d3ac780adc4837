import KVM
import Logging
import PCI
import Posix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The ioeventfd alternative for virtio doorbells (`rtvisor-vmm --notify ioeventfd`): KVM
/// completes the guest's notify write in the kernel and signals an eventfd; one thread waits
/// on all of them and runs the device. The default is the vCPU exit path, which docs/virtio.md
/// explains and scripts/bench-io.sh measures against this one.
final class IOEventNotifier: NotifyOffload {
    let vm: VirtualMachine
    let logger: Logger
    private let epoll: Epoll
    private struct Doorbell { let device: String; let queue: Int; let address: UInt64; let fd: EventFD; let handler: @Sendable (Int) -> Void }
    private let doorbells = Mutex<[UInt64: Doorbell]>([:])
    private let nextToken = Mutex<UInt64>(1)

    init(vm: VirtualMachine, logger: Logger) throws {
        self.vm = vm
        self.logger = logger
        let epoll = try Epoll()
        self.epoll = epoll
    }

    /// The waiting thread starts with the first doorbell (a guest driver getting ready), not at
    /// construction: the VMM enters its jail while it is still single-threaded.
    private let started = Mutex(false)
    private func startThread() throws {
        guard !started.withLock({ s in defer { s = true }; return s }) else { return }
        // The thread ends within a second of the notifier going away.
        let weakSelf = WeakBox(self)
        try PosixThread(name: "ioeventfd") {
            while let me = weakSelf.value {
                guard let events = try? me.epoll.wait(timeoutMilliseconds: 1000) else { return }
                // Paused: the doorbells stay signalled (not drained) until resume.
                guard me.beginServing() else {
                    var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                    nanosleep(&pause, nil)
                    continue
                }
                defer { me.endServing() }
                for (token, _) in events {
                    guard let bell = me.doorbells.withLock({ $0[token] }) else { continue }
                    bell.fd.drain()
                    bell.handler(bell.queue)
                }
            }
        }.detach()
    }

    // MARK: pause (snapshots): no device work runs from this thread while paused.

    private struct Serving { var paused = false; var busy = false }
    private let serving = Mutex(Serving())

    private func beginServing() -> Bool {
        serving.withLock { s in
            guard !s.paused else { return false }
            s.busy = true
            return true
        }
    }

    private func endServing() { serving.withLock { $0.busy = false } }

    /// Returns once the thread is between doorbells; it then serves none until `resume`.
    func pause() {
        serving.withLock { $0.paused = true }
        var pause = timespec(tv_sec: 0, tv_nsec: 100_000)
        while serving.withLock({ $0.busy }) { nanosleep(&pause, nil) }
    }

    func resume() { serving.withLock { $0.paused = false } }

    func attach(_ device: String, doorbells list: [(queue: Int, address: UInt64)], handler: @escaping @Sendable (Int) -> Void) {
        do { try startThread() } catch {
            logger.error("\(device): ioeventfd thread: \(error); using the vCPU exit path")
            return
        }
        for (queue, address) in list {
            do {
                let fd = try EventFD()
                // Virtio notify writes are 16-bit (the queue index).
                try vm.registerIOEventFD(fd.fd, address: address, length: 2)
                let token = nextToken.withLock { t -> UInt64 in defer { t += 1 }; return t }
                doorbells.withLock { $0[token] = Doorbell(device: device, queue: queue, address: address, fd: fd, handler: handler) }
                try epoll.add(fd.fd, events: .readable, token: token)
                logger.info("\(device): queue \(queue) doorbell 0x\(String(address, radix: 16)) on ioeventfd")
            } catch {
                logger.error("\(device): ioeventfd for queue \(queue) at 0x\(String(address, radix: 16)): \(error); using the vCPU exit path")
            }
        }
    }

    func detach(_ device: String) {
        let removed = doorbells.withLock { d -> [Doorbell] in
            let mine = d.filter { $0.value.device == device }
            for k in mine.keys { d[k] = nil }
            return Array(mine.values)
        }
        for bell in removed {
            try? vm.unregisterIOEventFD(bell.fd.fd, address: bell.address, length: 2)
        }
    }
}

final class WeakBox<T: AnyObject>: @unchecked Sendable {
    weak var value: T?
    init(_ v: T) { value = v }
}
