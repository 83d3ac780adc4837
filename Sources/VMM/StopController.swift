import KVM
import Synchronization

/// The first stop reason wins; requesting a stop kicks every vCPU out of KVM_RUN.
final class StopController: Sendable {
    private let reason = Mutex<StopReason?>(nil)
    private let vcpus = Mutex<[VCPU]>([])

    func register(_ vcpu: VCPU) { vcpus.withLock { $0.append(vcpu) } }

    var stopReason: StopReason? { reason.withLock { $0 } }
    var isStopping: Bool { reason.withLock { $0 != nil } }

    func request(_ r: StopReason) {
        let first: Bool = reason.withLock { current in
            guard current == nil else { return false }
            current = r
            return true
        }
        guard first else { return }
        for v in vcpus.withLock({ $0 }) { v.kick() }
    }
}
