//! Helpers shared by the daemon's integration tests: throw-away
//! directories and PSK files.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("aokd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` with `mode`; returns the path.
    pub fn write(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .expect("create file");
        f.write_all(contents).expect("write file");
        // `mode` is filtered by the umask at creation; set it exactly.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod");
        path
    }

    /// Writes a valid PSK file (64 hex digits, mode 0600).
    pub fn psk(&self, name: &str) -> PathBuf {
        self.write(
            name,
            b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
            0o600,
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The example configurations in daemon/examples, as (file name, text).
pub fn examples() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read examples dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("read example");
            out.push((name, text));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no examples in {}", dir.display());
    out
}

/// Rewrites an example so that it loads in `dir`: every `psk_file` becomes
/// a file name relative to the config, created there with mode 0600, and
/// the control socket and state dir move into `dir`.
pub fn localize_example(text: &str, dir: &TempDir) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("psk_file") {
            let value = rest.trim_start_matches([' ', '=']).trim_matches('"');
            let name = Path::new(value)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            dir.psk(&name);
            out.push_str(&format!("psk_file = \"{name}\"\n"));
        } else if trimmed.starts_with("control_socket") {
            out.push_str("control_socket = \"control.sock\"\n");
        } else if trimmed.starts_with("state_dir") {
            out.push_str("state_dir = \"state\"\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Makes `state` (mode 0700) with a state file holding one MKT record of
/// peer `r2`, then changes one hex digit of the record's SPI in the file
/// (every copy of the page): the record still decodes, and only the
/// page's checksum tells the damage. Returns the file.
pub fn state_file_with_a_damaged_record(state: &Path) -> PathBuf {
    use aokd_proto::crypto::Secret;
    use aokd_proto::mkt::{MacAlgorithm, MasterKeyTuple};
    let store = aokd::state::StateStore::open(state).expect("create the state file");
    let m = MasterKeyTuple {
        send_id: 1,
        recv_id: 2,
        algorithm: MacAlgorithm::HmacSha256_128,
        include_options: true,
        master_key: Secret::new(vec![7; 32]),
    };
    let spi = "0011223344556677";
    let rec = aokd::state::MktRecord::from_mkt(
        "r2",
        &m,
        spi,
        "8899aabbccddeeff",
        1_700_000_000,
        None,
        4_000_000_000,
    );
    store.put_mkt(&rec).expect("put an MKT record");
    let file = store.path().to_owned();
    drop(store);
    let mut bytes = std::fs::read(&file).expect("read the state file");
    let mut changed = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..]
        .windows(spi.len())
        .position(|w| w == spi.as_bytes())
    {
        bytes[i + at] = b'9';
        changed += 1;
        i += at + spi.len();
    }
    assert!(changed > 0, "the record's SPI is not in the file");
    std::fs::write(&file, &bytes).expect("write the state file");
    file
}
