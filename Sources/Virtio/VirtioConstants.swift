/// Device types (virtio 1.x section 5).
public enum VirtioDeviceType: UInt32, Sendable {
    case net = 1
    case block = 2
}

/// Feature bits common to all devices (virtio 1.x section 6).
public enum VirtioFeature {
    public static let ringIndirectDescriptors: UInt64 = 1 << 28
    public static let ringEventIndex: UInt64 = 1 << 29
    public static let version1: UInt64 = 1 << 32
    /// What every device model offers besides its own features: VERSION_1 and the ring features
    /// `VirtQueue` implements.
    public static let common: UInt64 = version1 | ringIndirectDescriptors | ringEventIndex
}

/// Device status bits (virtio 1.x section 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let needsReset: UInt8 = 0x40
    public static let failed: UInt8 = 0x80
}
