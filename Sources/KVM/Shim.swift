import CKVM

// Thin Swift names for the C shim, so no other file in this module spells CKVM symbols twice.
@inline(__always) func ckvmIoctlPtr(_ fd: Int32, _ req: UInt, _ arg: UnsafeMutableRawPointer?) -> Int32 {
    ckvm_ioctl_ptr(fd, req, arg)
}
@inline(__always) func ckvmIoctlVal(_ fd: Int32, _ req: UInt, _ arg: UInt) -> Int32 {
    ckvm_ioctl_val(fd, req, arg)
}
