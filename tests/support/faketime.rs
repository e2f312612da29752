//! Debian's libfaketime (package `faketime`) for the machine's architecture, found by its
//! multiarch triplet rather than an x86_64 path, so that the clock tests run on the Pi's too.

/// `/usr/lib/<triplet>/faketime/libfaketime.so.1`.
pub fn faketime_lib() -> String {
    let triplet = match std::env::consts::ARCH {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "x86" => "i386-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        other => other,
    };
    format!("/usr/lib/{triplet}/faketime/libfaketime.so.1")
}
