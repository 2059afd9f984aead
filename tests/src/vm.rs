//! A throwaway Linux machine for what this host's kernel setup cannot show (these machines
//! mount cgroup v1, so cgroup v2 is tested in a guest that mounts v2): qemu under software
//! emulation boots Debian's kernel from an initramfs made here, holding busybox, the `mesofs`
//! binary with its shared libraries, the fuse module, and a scenario script that runs as the
//! guest's init, prints what it saw on the serial console and powers off.
//!
//! Needs `qemu-system-x86_64`, a kernel in `/boot` with its modules, and `busybox` (Debian:
//! `qemu-system-x86 linux-image-amd64 busybox-static`, which `.ci/run` installs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-x86_64";
const BUSYBOX: &str = "/bin/busybox";

/// What a guest needs from the host: a kernel and the fuse module built for it.
pub struct Kernel {
    /// The bootable image (`/boot/vmlinuz-<version>`).
    pub image: PathBuf,
    /// Its fuse module (`/lib/modules/<version>/kernel/fs/fuse/fuse.ko`).
    pub fuse_module: PathBuf,
}

/// The newest kernel in `/boot` whose modules include an uncompressed fuse module.
pub fn find_kernel() -> Option<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?;
            let fuse_module =
                PathBuf::from(format!("/lib/modules/{version}/kernel/fs/fuse/fuse.ko"));
            fuse_module.exists().then(|| Kernel {
                image: e.path(),
                fuse_module,
            })
        })
        .collect();
    found.sort_by(|a, b| a.image.cmp(&b.image));
    found.pop()
}

/// True when a guest can be booted here. Otherwise says loudly what is missing; under
/// `CI=true` that is a failure.
pub fn can_boot() -> bool {
    let qemu = which(QEMU);
    let kernel = find_kernel().is_some();
    let busybox = Path::new(BUSYBOX).exists();
    let root = nix::unistd::geteuid().is_root();
    if qemu && kernel && busybox && root {
        return true;
    }
    let why = format!(
        "the VM tests need root, {QEMU}, a kernel in /boot with its fuse module, and {BUSYBOX} \
         (root: {root}, qemu: {qemu}, kernel: {kernel}, busybox: {busybox}); on Debian: \
         apt-get install qemu-system-x86 linux-image-amd64 busybox-static"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true, so this is a failure");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {why} !!!!!!!!\n");
    false
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The files of a guest's initramfs, by their path in the guest.
pub struct Image {
    entries: Vec<(String, u32, Vec<u8>)>,
}

impl Image {
    /// An image with the guest's directories, busybox (as `/bin/busybox` and `/bin/sh`), the fuse module as `/fuse.ko`, and `init` as `/init`.
    pub fn new(kernel: &Kernel, init: &str) -> Image {
        let mut image = Image {
            entries: Vec::new(),
        };
        for dir in [
            "bin", "dev", "etc", "lib", "lib64", "mnt", "proc", "root", "sys", "tmp", "usr",
        ] {
            image.dir(dir);
        }
        image.binary("bin/busybox", Path::new(BUSYBOX));
        // The init script's interpreter; it installs the other applets itself.
        image.symlink("bin/sh", "busybox");
        image.file("fuse.ko", 0o644, read(&kernel.fuse_module));
        image.file("init", 0o755, init.as_bytes().to_vec());
        image.file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        );
        image.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
        image
    }

    /// Adds a directory (and its parents, if missing).
    pub fn dir(&mut self, path: &str) {
        let mut so_far = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(part);
            if !self.entries.iter().any(|(p, _, _)| *p == so_far) {
                self.entries.push((so_far.clone(), 0o040755, Vec::new()));
            }
        }
    }

    /// Adds a regular file with `mode` (permission bits).
    pub fn file(&mut self, path: &str, mode: u32, content: Vec<u8>) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.dir(dir);
        }
        self.entries
            .push((path.to_string(), 0o100000 | mode, content));
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.dir(dir);
        }
        self.entries
            .push((path.to_string(), 0o120777, target.as_bytes().to_vec()));
    }

    /// Adds an executable, without its debug information, and every shared library it loads
    /// (at the paths `ldd` gives, which is where its loader looks).
    pub fn binary(&mut self, path: &str, host: &Path) {
        self.file(path, 0o755, stripped(host));
        for lib in shared_libraries(host) {
            let guest = lib.to_string_lossy().trim_start_matches('/').to_string();
            if !self.entries.iter().any(|(p, _, _)| *p == guest) {
                self.file(&guest, 0o755, read(&lib));
            }
        }
    }

    /// Writes the image as an uncompressed newc cpio archive, which the kernel unpacks.
    fn write_to(self, out: &Path) {
        let file = std::fs::File::create(out).expect("creating the initramfs");
        let inputs = self
            .entries
            .into_iter()
            .zip(1..)
            .map(|((path, mode, content), ino)| {
                let builder = cpio::newc::Builder::new(&path).ino(ino).mode(mode).nlink(1);
                (builder, std::io::Cursor::new(content))
            });
        let mut file = cpio::write_cpio(inputs, file).expect("writing the initramfs");
        file.flush().expect("writing the initramfs");
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The executable without debug sections (a debug `mesofs` is ~200 MB with them, ~30 MB
/// without); as it is if `objcopy` is missing.
fn stripped(host: &Path) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().expect("a temporary file");
    let ok = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(host)
        .arg(out.path())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        read(out.path())
    } else {
        read(host)
    }
}

/// The shared libraries `ldd` says `binary` loads, including the loader itself.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let Ok(out) = Command::new("ldd").arg(binary).output() else {
        return Vec::new();
    };
    // Lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
    // "/lib64/ld-linux-x86-64.so.2 (0x...)"; a static binary prints no path.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.split(" (").next()?.trim();
            let path = l.rsplit("=> ").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// What a guest printed, and whether it powered off by itself.
pub struct Run {
    /// Everything the guest wrote to its serial console.
    pub console: String,
    /// False when it was still running at the deadline and was killed.
    pub finished: bool,
}

impl Run {
    /// The values of the lines `FACT <key> <value>` the scenario printed for `key`, in order.
    pub fn facts(&self, key: &str) -> Vec<String> {
        self.console
            .lines()
            .filter_map(|l| {
                let l = l.trim_end_matches('\r');
                let rest = l.strip_prefix("FACT ")?;
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                (k == key).then(|| v.to_string())
            })
            .collect()
    }

    /// The one value of `key`; panics, showing the console, if there is not exactly one.
    pub fn fact(&self, key: &str) -> String {
        let mut values = self.facts(key);
        if values.len() != 1 {
            panic!(
                "the guest printed {} FACT {key} lines, expected one; its console:\n{}",
                values.len(),
                self.console
            );
        }
        values.remove(0)
    }
}

/// Boots a guest from `image` with `memory_mb` of memory and 2 cpus, and waits for it to
/// power off, at most `timeout`.
pub fn boot(kernel: &Kernel, image: Image, memory_mb: u32, timeout: Duration) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let initramfs = dir.path().join("initramfs.cpio");
    image.write_to(&initramfs);
    let console = dir.path().join("console.log");
    // Software emulation (tcg): nested KVM is not reliable on these machines.
    let mut child = Command::new(QEMU)
        .args(["-accel", "tcg", "-smp", "2", "-m", &memory_mb.to_string()])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .args(["-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {QEMU}: {e}"));
    let deadline = Instant::now() + timeout;
    let finished = loop {
        if child.try_wait().expect("waiting for qemu").is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let console = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into();
    Run { console, finished }
}
