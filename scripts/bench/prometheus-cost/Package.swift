// swift-tools-version:6.0
import PackageDescription
let package = Package(name: "PromCost", platforms: [.macOS(.v13)],
    dependencies: [.package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1")],
    targets: [.executableTarget(name: "PromCost", dependencies: [.product(name: "Prometheus", package: "swift-prometheus")],
                                swiftSettings: [.swiftLanguageMode(.v5)])])
