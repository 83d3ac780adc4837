import Arch
import CKVM
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A port I/O exit. `data` points into the vCPU's shared `kvm_run` page and is valid until the next run.
public struct PortIO {
    public let port: UInt16
    /// Bytes per access: 1, 2 or 4.
    public let size: Int
    /// More than 1 for string I/O (`rep ins/outs`).
    public let count: Int
    public let isWrite: Bool
    let data: UnsafeMutableRawPointer

    public func value(at i: Int = 0) -> UInt32 {
        let p = data + i * size
        switch size {
        case 1: return UInt32(p.load(as: UInt8.self))
        case 2: return UInt32(p.loadUnaligned(as: UInt16.self))
        default: return p.loadUnaligned(as: UInt32.self)
        }
    }

    public func setValue(_ v: UInt32, at i: Int = 0) {
        let p = data + i * size
        switch size {
        case 1: p.storeBytes(of: UInt8(truncatingIfNeeded: v), as: UInt8.self)
        case 2: p.storeBytes(of: UInt16(truncatingIfNeeded: v), as: UInt16.self)
        default: p.storeBytes(of: v, as: UInt32.self)
        }
    }
}

/// An MMIO exit; as `PortIO`, valid until the next run.
public struct MMIOAccess {
    public let address: UInt64
    public let size: Int
    public let isWrite: Bool
    let data: UnsafeMutableRawPointer

    public var value: UInt64 {
        var v: UInt64 = 0
        for i in 0..<min(size, 8) { v |= UInt64(data.load(fromByteOffset: i, as: UInt8.self)) << (8 * i) }
        return v
    }

    public func setValue(_ v: UInt64) {
        for i in 0..<min(size, 8) { data.storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * i)), toByteOffset: i, as: UInt8.self) }
    }
}

/// Why `KVM_RUN` returned.
public enum VCPUExit {
    case portIO(PortIO)
    case mmio(MMIOAccess)
    /// Only without an in-kernel irqchip; with one, HLT stays in the kernel.
    case halt
    /// Triple fault (or another reason the CPU shut down).
    case shutdown
    case systemEvent(type: UInt32)
    /// `suberror` 1 is KVM_INTERNAL_ERROR_EMULATION: the host could not emulate an instruction.
    case internalError(suberror: UInt32, data: [UInt64])
    case failEntry(reason: UInt64)
    /// The run was interrupted by a signal or `immediate_exit` (see `VCPU.kick`).
    case interrupted
    case other(reason: UInt32)
}

public enum SystemEventType {
    public static let shutdown = UInt32(KVM_SYSTEM_EVENT_SHUTDOWN)
    public static let reset = UInt32(KVM_SYSTEM_EVENT_RESET)
    public static let crash = UInt32(KVM_SYSTEM_EVENT_CRASH)
}

public enum InternalErrorSuberror {
    public static let emulation = UInt32(KVM_INTERNAL_ERROR_EMULATION)
    public static let simultaneousException = UInt32(KVM_INTERNAL_ERROR_SIMUL_EX)
    public static let deliveryEvent = UInt32(KVM_INTERNAL_ERROR_DELIVERY_EV)

    public static func name(_ s: UInt32) -> String {
        switch s {
        case emulation: "emulation failure"
        case simultaneousException: "exception during exception delivery"
        case deliveryEvent: "event delivery failure"
        default: "unknown suberror"
        }
    }
}

/// One virtual CPU. Used by exactly one thread at a time, except `kick`, which any thread may call.
public final class VCPU: @unchecked Sendable {
    public let fd: FileDescriptor
    public let id: Int
    private let runState: UnsafeMutablePointer<kvm_run>
    private let mmapSize: Int
    private var thread: pthread_t? = nil
    private let threadLock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    /// The signal `kick` sends; the VMM installs an empty, non-restarting handler for it.
    public static let kickSignal = SIGUSR2

    init(fd: FileDescriptor, id: Int, mmapSize: Int) throws {
        self.fd = fd
        self.id = id
        self.mmapSize = mmapSize
        let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, 0)
        guard let p, p != MAP_FAILED else { throw KVMError("mmap(kvm_run)", Errno(rawValue: errno)) }
        runState = p.bindMemory(to: kvm_run.self, capacity: 1)
        pthread_mutex_init(threadLock, nil)
    }

    deinit {
        munmap(runState, mmapSize)
        pthread_mutex_destroy(threadLock)
        threadLock.deallocate()
        try? fd.close()
    }

    /// Records the calling thread as the one running this vCPU, so `kick` can reach it.
    public func bindToCurrentThread() {
        pthread_mutex_lock(threadLock); thread = pthread_self(); pthread_mutex_unlock(threadLock)
    }

    public func unbindThread() {
        pthread_mutex_lock(threadLock); thread = nil; pthread_mutex_unlock(threadLock)
    }

    /// Makes the current or next `run()` return `.interrupted` promptly.
    public func kick() {
        runState.pointee.immediate_exit = 1
        pthread_mutex_lock(threadLock)
        if let t = thread { pthread_kill(t, Self.kickSignal) }
        pthread_mutex_unlock(threadLock)
    }

    public func run() throws -> VCPUExit {
        while true {
            do {
                try IOCtl.call(fd, CKVM_RUN, "KVM_RUN", nil, interruptible: true)
                break
            } catch let e as KVMError where e.errno == .interrupted {
                return .interrupted
            } catch let e as KVMError where e.errno == .resourceTemporarilyUnavailable {
                // An AP leaving wait-for-SIPI returns EAGAIN once; running again starts it.
                continue
            }
        }
        let r = runState.pointee
        let raw = UnsafeMutableRawPointer(runState)
        switch Int32(r.exit_reason) {
        case KVM_EXIT_IO:
            let io = r.io
            return .portIO(PortIO(port: io.port, size: Int(io.size), count: Int(io.count),
                                  isWrite: io.direction == UInt8(KVM_EXIT_IO_OUT), data: raw + Int(io.data_offset)))
        case KVM_EXIT_MMIO:
            return .mmio(MMIOAccess(address: r.mmio.phys_addr, size: Int(r.mmio.len), isWrite: r.mmio.is_write != 0,
                                    data: UnsafeMutableRawPointer(ckvm_run_mmio_data(runState))))
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: r.system_event.type)
        case KVM_EXIT_INTR: return .interrupted
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: r.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTERNAL_ERROR:
            let n = Int(min(r.internal.ndata, 16))
            let data = withUnsafeBytes(of: r.internal.data) { Array($0.bindMemory(to: UInt64.self).prefix(n)) }
            return .internalError(suberror: r.internal.suberror, data: data)
        default:
            return .other(reason: r.exit_reason)
        }
    }

    /// Clears `immediate_exit` after a kick has been handled (only the owning thread calls this).
    public func clearImmediateExit() { runState.pointee.immediate_exit = 0 }

    // MARK: registers

    /// Hands `copy` each general register in both shapes, ours and KVM's: the one list of the 18 that
    /// `registers()` (KVM's to ours) and `setRegisters(_:)` (ours to KVM's) both walk.
    private static func pairRegisters(_ r: inout GeneralRegisters, _ k: inout kvm_regs, _ copy: (inout UInt64, inout UInt64) -> Void) {
        copy(&r.rax, &k.rax); copy(&r.rbx, &k.rbx); copy(&r.rcx, &k.rcx); copy(&r.rdx, &k.rdx)
        copy(&r.rsi, &k.rsi); copy(&r.rdi, &k.rdi); copy(&r.rsp, &k.rsp); copy(&r.rbp, &k.rbp)
        copy(&r.r8, &k.r8); copy(&r.r9, &k.r9); copy(&r.r10, &k.r10); copy(&r.r11, &k.r11)
        copy(&r.r12, &k.r12); copy(&r.r13, &k.r13); copy(&r.r14, &k.r14); copy(&r.r15, &k.r15)
        copy(&r.rip, &k.rip); copy(&r.rflags, &k.rflags)
    }

    public func registers() throws -> GeneralRegisters {
        var k = kvm_regs()
        try IOCtl.call(fd, CKVM_GET_REGS, "KVM_GET_REGS", &k)
        var r = GeneralRegisters()
        Self.pairRegisters(&r, &k) { r, k in r = k }
        return r
    }

    public func setRegisters(_ r: GeneralRegisters) throws {
        var r = r
        var k = kvm_regs()
        Self.pairRegisters(&r, &k) { r, k in k = r }
        try IOCtl.call(fd, CKVM_SET_REGS, "KVM_SET_REGS", &k)
    }

    /// Reads sregs, overlays the boot state and writes them back (fields not modelled are kept).
    public func setSpecialRegisters(_ s: SpecialRegisters) throws {
        var k = kvm_sregs()
        try IOCtl.call(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &k)
        func seg(_ s: Segment) -> kvm_segment {
            var g = kvm_segment()
            g.base = s.base; g.limit = s.limit; g.selector = s.selector; g.type = s.type
            g.present = s.present ? 1 : 0; g.dpl = s.dpl; g.db = s.db ? 1 : 0; g.s = s.s ? 1 : 0
            g.l = s.l ? 1 : 0; g.g = s.g ? 1 : 0; g.avl = s.avl ? 1 : 0; g.unusable = s.unusable ? 1 : 0
            return g
        }
        k.cs = seg(s.cs); k.ds = seg(s.ds); k.es = seg(s.es); k.fs = seg(s.fs); k.gs = seg(s.gs)
        k.ss = seg(s.ss); k.tr = seg(s.tr)
        k.gdt.base = s.gdt.base; k.gdt.limit = s.gdt.limit
        k.idt.base = s.idt.base; k.idt.limit = s.idt.limit
        k.cr0 = s.cr0; k.cr3 = s.cr3; k.cr4 = s.cr4; k.efer = s.efer
        try IOCtl.call(fd, CKVM_SET_SREGS, "KVM_SET_SREGS", &k)
    }

    public struct ControlState: Sendable { public let cr0, cr3, cr4, efer: UInt64 }

    public func controlState() throws -> ControlState {
        var k = kvm_sregs()
        try IOCtl.call(fd, CKVM_GET_SREGS, "KVM_GET_SREGS", &k)
        return ControlState(cr0: k.cr0, cr3: k.cr3, cr4: k.cr4, efer: k.efer)
    }

    public func setCPUID(_ entries: [CPUIDEntry]) throws {
        guard entries.count <= Int(CKVM_MAX_CPUID_ENTRIES) else {
            throw KVMError("KVM_SET_CPUID2", .tooManyOpenFiles, hint: "\(entries.count) CPUID entries exceed the shim's table")
        }
        var table = ckvm_cpuid2()
        table.nent = UInt32(entries.count)
        withUnsafeMutableBytes(of: &table.entries) { raw in
            let out = raw.bindMemory(to: kvm_cpuid_entry2.self)
            for (i, e) in entries.enumerated() {
                var k = kvm_cpuid_entry2()
                k.function = e.function; k.index = e.index; k.flags = e.flags
                k.eax = e.eax; k.ebx = e.ebx; k.ecx = e.ecx; k.edx = e.edx
                out[i] = k
            }
        }
        try IOCtl.call(fd, CKVM_SET_CPUID2, "KVM_SET_CPUID2", &table)
    }

    /// The CPUID table KVM holds for this vCPU (KVM_GET_CPUID2).
    public func cpuid() throws -> [CPUIDEntry] {
        var table = ckvm_cpuid2()
        table.nent = UInt32(CKVM_MAX_CPUID_ENTRIES)
        try IOCtl.call(fd, CKVM_GET_CPUID2, "KVM_GET_CPUID2", &table)
        return CPUIDEntry.from(&table)
    }

    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws {
        var table = ckvm_msrs()
        table.nmsrs = UInt32(msrs.count)
        withUnsafeMutableBytes(of: &table.entries) { raw in
            let out = raw.bindMemory(to: kvm_msr_entry.self)
            for (i, m) in msrs.prefix(Int(CKVM_MAX_MSR_ENTRIES)).enumerated() {
                var e = kvm_msr_entry(); e.index = m.index; e.data = m.value; out[i] = e
            }
        }
        let set = try IOCtl.call(fd, CKVM_SET_MSRS, "KVM_SET_MSRS", &table)
        if Int(set) != msrs.count {
            let failed = msrs[Int(set)].index
            throw KVMError("KVM_SET_MSRS", .invalidArgument, hint: "MSR 0x\(String(failed, radix: 16)) was refused")
        }
    }

    /// x87 control word and MXCSR as after FNINIT/reset.
    public func initFPU() throws {
        var f = kvm_fpu()
        f.fcw = 0x37F
        f.mxcsr = 0x1F80
        try IOCtl.call(fd, CKVM_SET_FPU, "KVM_SET_FPU", &f)
    }

    /// LINT0 = ExtINT (the 8259 passes through), LINT1 = NMI, as a PC's firmware leaves them.
    public func setupLocalInterrupts() throws {
        var lapic = kvm_lapic_state()
        try IOCtl.call(fd, CKVM_GET_LAPIC, "KVM_GET_LAPIC", &lapic)
        withUnsafeMutableBytes(of: &lapic.regs) { regs in
            func update(_ offset: Int, mode: UInt32) {
                var v = regs.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
                v = (v & ~0x700) | (mode << 8)
                regs.storeBytes(of: v, toByteOffset: offset, as: UInt32.self)
            }
            update(0x350, mode: 7) // LVT LINT0: ExtINT
            update(0x360, mode: 4) // LVT LINT1: NMI
        }
        try IOCtl.call(fd, CKVM_SET_LAPIC, "KVM_SET_LAPIC", &lapic)
    }

    /// Guest-virtual → guest-physical through the vCPU's current page tables.
    public func translate(_ linear: UInt64) throws -> UInt64? {
        var t = kvm_translation()
        t.linear_address = linear
        try IOCtl.call(fd, CKVM_TRANSLATE, "KVM_TRANSLATE", &t)
        return t.valid != 0 ? t.physical_address : nil
    }
}

// MARK: exits without a kvm_run page

extension PortIO {
    /// A port access backed by a buffer of its own instead of a vCPU's `kvm_run` page: an exit
    /// replayed or tested without KVM. `values` are the access's data (one per repetition);
    /// returns them after `body` (what a read stored).
    public static func simulated(port: UInt16, size: Int, isWrite: Bool, values: [UInt32], _ body: (PortIO) -> Void) -> [UInt32] {
        precondition([1, 2, 4].contains(size) && !values.isEmpty)
        let data = UnsafeMutableRawPointer.allocate(byteCount: size * values.count, alignment: 8)
        defer { data.deallocate() }
        let io = PortIO(port: port, size: size, count: values.count, isWrite: isWrite, data: data)
        for (i, v) in values.enumerated() { io.setValue(v, at: i) }
        body(io)
        return (0..<values.count).map { io.value(at: $0) }
    }
}

extension MMIOAccess {
    /// As `PortIO.simulated`: an MMIO access of `size` bytes (1–8); returns the value after `body`.
    public static func simulated(address: UInt64, size: Int, isWrite: Bool, value: UInt64, _ body: (MMIOAccess) -> Void) -> UInt64 {
        precondition((1...8).contains(size))
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { data.deallocate() }
        let access = MMIOAccess(address: address, size: size, isWrite: isWrite, data: data)
        access.setValue(value)
        body(access)
        return access.value
    }
}
