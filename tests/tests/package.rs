//! The man pages, shell completions and Debian package (docs/packaging.md).
//!
//! - `generated_pages_and_completions_cover_every_subcommand`: for aokd and
//!   aoctl, `generate man` is a page groff formats without a warning, with a
//!   section for every subcommand `--help` lists (so a subcommand added
//!   later is covered without a change here), and the bash completion
//!   offers each of them and not the hidden `generate`.
//! - `the_package_installs_every_file_with_its_mode`: `dist/deb/build` (a
//!   release build, then dpkg-deb), `dpkg -i` into an empty directory tree
//!   with a fresh dpkg database, then every installed file and its mode, and
//!   nothing else; the installed binaries and preload library run, the man
//!   pages format with `man -l` and groff, the installed completions work,
//!   the unit runs the installed aokd, and `systemd-analyze verify` accepts
//!   it.
//!
//! Needs groff and bash (and for the package root, dpkg and dpkg-deb):
//! missing, the test fails when `CI` is set and is skipped with the reason
//! printed otherwise. zsh, fish and systemd-analyze are used when installed.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use aokd_tests::host::{can_run, is_root, on_path, target_dir};
use aokd_tests::{binary, temp_dir};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn missing(tools: &[&str]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| !on_path(t))
        .map(|t| format!("{t} is not installed (.ci/run installs it)"))
        .collect()
}

/// groff formats the page (roff, or gzip-compressed roff) without a word
/// on standard error.
fn assert_groff_clean(page: &Path) {
    let roff = if page.extension().is_some_and(|e| e == "gz") {
        run(Command::new("gzip").arg("-dc").arg(page)).stdout
    } else {
        std::fs::read(page).expect("read page")
    };
    let dir = temp_dir("groff");
    let file = dir.join("page");
    std::fs::write(&file, &roff).unwrap();
    let out = run(Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&file));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.is_empty(),
        "groff warns about {}: {stderr}",
        page.display()
    );
}

/// The subcommands `BIN --help` lists, except `help`.
fn listed_subcommands(bin: &Path) -> Vec<String> {
    let help = String::from_utf8(run(Command::new(bin).arg("--help")).stdout).unwrap();
    let subs: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    assert!(!subs.is_empty(), "no subcommands in {help}");
    assert!(
        !subs.iter().any(|s| s == "generate"),
        "generate is hidden: {help}"
    );
    subs
}

/// What the bash completion `script` of `name` offers after `name `.
fn bash_offers(script: &Path, name: &str) -> Vec<String> {
    let out = run(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && COMP_WORDS=({name} '') && COMP_CWORD=1 && _{name} {name} '' {name} \
         && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    )));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The bash completion of `bin` offers every subcommand and not `generate`.
fn assert_bash_completes(script: &Path, name: &str, subs: &[String]) {
    let offered = bash_offers(script, name);
    for sub in subs {
        assert!(
            offered.contains(sub),
            "{}: bash offers {offered:?}, not {sub}",
            script.display()
        );
    }
    assert!(
        !offered.iter().any(|o| o == "generate"),
        "{}: bash offers the hidden generate",
        script.display()
    );
}

/// zsh and fish check the syntax of their completion scripts, when installed.
fn check_shell_syntax(shell: &str, script: &Path) {
    if !on_path(shell) {
        eprintln!(
            "not checked: {} ({shell} is not installed)",
            script.display()
        );
        return;
    }
    let flag = if shell == "fish" {
        "--no-execute"
    } else {
        "-n"
    };
    run(Command::new(shell).arg(flag).arg(script));
}

#[test]
fn generated_pages_and_completions_cover_every_subcommand() {
    if !can_run(
        "generated_pages_and_completions_cover_every_subcommand",
        &missing(&["groff", "bash"]),
    ) {
        return;
    }
    let dir = temp_dir("manual");
    for name in ["aokd", "aoctl"] {
        let bin = binary(name);
        let subs = listed_subcommands(&bin);
        let page = run(Command::new(&bin).args(["generate", "man"])).stdout;
        let text = String::from_utf8(page.clone()).unwrap();
        assert!(
            text.contains(&format!("\n.TH {} 8 ", name.to_uppercase())),
            "{text}"
        );
        for sub in &subs {
            let heading = format!("\n.SS {}\n", sub.replace('-', "\\-"));
            assert!(text.contains(&heading), "no {heading:?} in {name}.8");
        }
        for section in [
            "SYNOPSIS",
            "OPTIONS",
            "COMMANDS",
            "EXIT STATUS",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(
                text.contains(&format!("\n.SH {section}\n")),
                "no {section} in {name}.8"
            );
        }
        assert!(
            !text.contains("\n.SS generate\n"),
            "the hidden subcommand shows in {name}.8"
        );
        let file = dir.join(format!("{name}.8"));
        std::fs::write(&file, &page).unwrap();
        assert_groff_clean(&file);

        let bash = dir.join(format!("{name}.bash"));
        std::fs::write(
            &bash,
            run(Command::new(&bin).args(["generate", "bash"])).stdout,
        )
        .unwrap();
        assert_bash_completes(&bash, name, &subs);
        for (shell, file) in [
            ("zsh", format!("_{name}")),
            ("fish", format!("{name}.fish")),
        ] {
            let script = dir.join(file);
            std::fs::write(
                &script,
                run(Command::new(&bin).args(["generate", shell])).stdout,
            )
            .unwrap();
            assert!(
                std::fs::metadata(&script).unwrap().len() > 0,
                "{shell} completion of {name} is empty"
            );
            check_shell_syntax(shell, &script);
        }
        println!(
            "{name}: {} subcommands in the page and the bash completion",
            subs.len()
        );
    }
    assert_groff_clean(&Path::new(REPO).join("dist/aokd.toml.5"));
}

/// Every file and directory under `root` except dpkg's database, with its
/// mode (permission bits) and whether it is a directory.
fn tree(root: &Path) -> BTreeMap<String, (u32, bool)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, bool)>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == "var/lib/dpkg" || rel.starts_with("var/lib/dpkg/") {
                continue;
            }
            // The directories made for dpkg's database: what else is in
            // them counts.
            if rel == "var" || rel == "var/lib" {
                walk(root, &path, out);
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            assert!(!meta.file_type().is_symlink(), "{rel}: unexpected symlink");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (0, 0),
                "{rel}: not owned by root:root"
            );
            out.insert(rel, (meta.permissions().mode() & 0o7777, meta.is_dir()));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn the_package_installs_every_file_with_its_mode() {
    let mut need = missing(&["dpkg", "dpkg-deb", "groff", "bash", "gzip"]);
    if !is_root() {
        need.push("root (dpkg -i into a directory tree, files owned by root)".into());
    }
    if !can_run("the_package_installs_every_file_with_its_mode", &need) {
        return;
    }
    let work = temp_dir("deb");
    let started = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = target_dir().parent().expect("target/").to_path_buf();
    let out = run(Command::new(Path::new(REPO).join("dist/deb/build"))
        .arg(work.join("out"))
        .env("CARGO", &cargo)
        .env("CARGO_TARGET_DIR", &target));
    let built = started.elapsed();
    let deb = PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("the .deb's path"),
    );
    assert!(deb.is_file(), "{} was not built", deb.display());
    let fields =
        String::from_utf8(run(Command::new("dpkg-deb").arg("--field").arg(&deb)).stdout).unwrap();
    for needle in ["Package: aokd\n", "Depends: libc6 (>= 2.", "Architecture: "] {
        assert!(
            fields.contains(needle),
            "no {needle:?} in the control file:\n{fields}"
        );
    }
    assert!(
        !run(Command::new("dpkg-deb").args(["--ctrl-tarfile"]).arg(&deb))
            .stdout
            .windows(9)
            .any(|w| w == b"conffiles"),
        "no conffiles are expected (no configuration is shipped)"
    );

    // A clean tree: nothing but dpkg's empty database. Depends are not
    // installed there, hence --force-depends (they are checked above).
    let root = work.join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    let installing = Instant::now();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-depends", "-i"])
        .arg(&deb));
    let installed_in = installing.elapsed();
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-s", "aokd"]));
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("Status: install ok installed"),
        "{status:?}"
    );

    // Every file with its mode, and nothing else.
    let mut expected: BTreeMap<String, (u32, bool)> = BTreeMap::new();
    let file = |mode| (mode, false);
    for (path, entry) in [
        ("usr/sbin/aokd", file(0o755)),
        ("usr/bin/aoctl", file(0o755)),
        ("usr/lib/aokd/libaokd_preload.so", file(0o644)),
        ("lib/systemd/system/aokd.service", file(0o644)),
        ("etc/aokd", (0o700, true)),
        ("usr/share/man/man8/aokd.8.gz", file(0o644)),
        ("usr/share/man/man8/aoctl.8.gz", file(0o644)),
        ("usr/share/man/man5/aokd.toml.5.gz", file(0o644)),
        ("usr/share/bash-completion/completions/aokd", file(0o644)),
        ("usr/share/bash-completion/completions/aoctl", file(0o644)),
        ("usr/share/zsh/vendor-completions/_aokd", file(0o644)),
        ("usr/share/zsh/vendor-completions/_aoctl", file(0o644)),
        ("usr/share/fish/vendor_completions.d/aokd.fish", file(0o644)),
        (
            "usr/share/fish/vendor_completions.d/aoctl.fish",
            file(0o644),
        ),
        ("usr/share/doc/aokd/copyright", file(0o644)),
        ("usr/share/doc/aokd/README.md", file(0o644)),
    ] {
        expected.insert(path.into(), entry);
    }
    for (dir, from) in [
        ("usr/share/doc/aokd/examples", "daemon/examples"),
        ("usr/share/doc/aokd/docs", "docs"),
    ] {
        for entry in std::fs::read_dir(Path::new(REPO).join(from)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".toml") || name.ends_with(".md") {
                expected.insert(format!("{dir}/{name}"), file(0o644));
            }
        }
    }
    // Every directory above them, 0755 (except /etc/aokd, listed above).
    let dirs: Vec<String> = expected
        .keys()
        .flat_map(|p| {
            Path::new(p)
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for d in dirs {
        expected.entry(d).or_insert((0o755, true));
    }
    let found = tree(&root);
    let show = |m: &BTreeMap<String, (u32, bool)>| {
        m.iter()
            .map(|(p, (mode, dir))| format!("{p} {mode:04o}{}\n", if *dir { " dir" } else { "" }))
            .collect::<String>()
    };
    assert_eq!(
        show(&found),
        show(&expected),
        "installed (left) is not what the package should install (right)"
    );
    // dpkg knows each of them as the package's.
    let listed = String::from_utf8(
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["-L", "aokd"]))
        .stdout,
    )
    .unwrap();
    for path in expected.keys() {
        assert!(
            listed.lines().any(|l| l == format!("/{path}")),
            "dpkg -L aokd lacks /{path}"
        );
    }

    // The installed binaries and library run.
    let aokd = root.join("usr/sbin/aokd");
    let aoctl = root.join("usr/bin/aoctl");
    let version = format!("aokd {}", env!("CARGO_PKG_VERSION"));
    assert!(
        String::from_utf8_lossy(&run(Command::new(&aokd).arg("--version")).stdout)
            .contains(&version)
    );
    assert!(
        String::from_utf8_lossy(&run(Command::new(&aoctl).arg("--version")).stdout)
            .contains(&format!("aoctl {}", env!("CARGO_PKG_VERSION")))
    );
    let conf = work.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    run(Command::new(&aoctl).arg("gen-psk").arg(conf.join("r2.psk")));
    let minimal =
        std::fs::read_to_string(root.join("usr/share/doc/aokd/examples/minimal.toml")).unwrap();
    let psk_line = minimal
        .lines()
        .find(|l| l.starts_with("psk_file"))
        .expect("psk_file in minimal.toml");
    std::fs::write(
        conf.join("aokd.toml"),
        minimal.replace(psk_line, "psk_file = \"r2.psk\""),
    )
    .unwrap();
    let checked = run(Command::new(&aokd)
        .arg("check-config")
        .arg(conf.join("aokd.toml")));
    assert!(String::from_utf8_lossy(&checked.stdout).contains(": OK"));
    let preload = root.join("usr/lib/aokd/libaokd_preload.so");
    run(Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .env("LD_PRELOAD", &preload));

    // Man pages: groff without warnings, man -l when man is installed.
    for page in [
        "usr/share/man/man8/aokd.8.gz",
        "usr/share/man/man8/aoctl.8.gz",
        "usr/share/man/man5/aokd.toml.5.gz",
    ] {
        let page = root.join(page);
        assert_groff_clean(&page);
        if on_path("man") {
            let out = run(Command::new("man")
                .arg("-l")
                .arg(&page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80"));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("NAME") && text.contains("aokd"), "{text}");
        } else {
            eprintln!("man -l not run: man is not installed");
        }
    }
    // Completions: bash's work; zsh's and fish's parse when installed.
    for name in ["aokd", "aoctl"] {
        let subs = listed_subcommands(&root.join(if name == "aokd" {
            "usr/sbin/aokd"
        } else {
            "usr/bin/aoctl"
        }));
        assert_bash_completes(
            &root
                .join("usr/share/bash-completion/completions")
                .join(name),
            name,
            &subs,
        );
        check_shell_syntax(
            "zsh",
            &root.join(format!("usr/share/zsh/vendor-completions/_{name}")),
        );
        check_shell_syntax(
            "fish",
            &root.join(format!("usr/share/fish/vendor_completions.d/{name}.fish")),
        );
    }
    // The installed unit: the programs it runs are the package's, and
    // systemd-analyze verify accepts it with them at their place in the
    // tree (`--root=TREE` would look for systemd's own units and /bin/kill
    // in the empty tree too).
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/aokd.service")).unwrap();
    for line in unit.lines() {
        if let Some((_, command)) = line
            .split_once('=')
            .filter(|(k, _)| *k == "ExecStart" || *k == "ExecStartPre")
        {
            let program = command.split_whitespace().next().expect("a program");
            let installed = root.join(program.trim_start_matches('/'));
            assert!(
                installed.is_file(),
                "{line}: {program} is not in the package"
            );
        }
    }
    if on_path("systemd-analyze") {
        let dir = temp_dir("deb-unit");
        let file = dir.join("aokd.service");
        std::fs::write(
            &file,
            unit.replace("/usr/sbin/aokd", &aokd.display().to_string()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
            .expect("systemd-analyze");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let complaints: Vec<&str> = text.lines().filter(|l| l.contains("aokd")).collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify of the installed unit:\n{text}"
        );
    } else {
        eprintln!("systemd-analyze verify not run: systemd-analyze is not installed");
    }
    let size = std::fs::metadata(&deb).unwrap().len();
    println!(
        "{}: {size} octets, {} files; built in {:.1} s, installed in {:.2} s",
        deb.display(),
        expected.values().filter(|(_, d)| !d).count(),
        built.as_secs_f64(),
        installed_in.as_secs_f64()
    );
}
