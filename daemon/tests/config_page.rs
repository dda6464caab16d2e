//! aokd.toml(5), `dist/aokd.toml.5` (docs/packaging.md), against the
//! configuration parser: the page lists exactly the keys that the parser
//! knows (asked of the parser itself, so a key added to `config.rs` and not
//! to the page fails here), and each default it states is the real one:
//! setting the key to the stated default gives the same configuration as
//! leaving it out. (tests/tests/package.rs formats the page with groff.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use aokd::config::Config;
use common::TempDir;

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/aokd.toml.5");

/// One key of the page: its table, name, and stated default (TOML) if the
/// tag line has one.
#[derive(Debug)]
struct Entry {
    table: String,
    key: String,
    default: Option<String>,
    body: String,
}

/// Roff text without font escapes and with `\-` as `-`.
fn plain(roff: &str) -> String {
    roff.replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\-", "-")
        .replace("\\e", "\\")
}

/// The `.TP` entries of the `KEYS` section, by `.SS` table.
fn entries(page: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut table = None;
    let mut in_keys = false;
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix(".SH ") {
            in_keys = h == "KEYS";
            table = None;
        } else if let Some(t) = line.strip_prefix(".SS ") {
            table = Some(plain(t));
        } else if line == ".TP" && in_keys {
            let table = table.clone().expect("a .TP entry before any .SS table");
            let tag = plain(lines.next().expect("a tag line after .TP"));
            let (key, default) = match tag.split_once(" = ") {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (tag.trim().to_owned(), None),
            };
            out.push(Entry {
                table,
                key,
                default,
                body: String::new(),
            });
        } else if let Some(e) = out.last_mut().filter(|_| in_keys && !line.starts_with('.')) {
            e.body.push_str(&plain(line));
            e.body.push(' ');
        }
    }
    out
}

/// The keys the parser accepts in a table: it is given an unknown key,
/// and its error ("unknown field `zz`, expected one of `a`, `b`") lists them.
fn parser_keys(prefix: &str) -> BTreeSet<String> {
    let text = format!("{prefix}zz_not_a_key = 1\n");
    let err = Config::parse(&text, Path::new("/nonexistent/aokd.toml"))
        .expect_err("an unknown key is refused")
        .to_string();
    let (_, expected) = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of expected keys in {err:?}"));
    let expected = expected.lines().next().unwrap_or_default();
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

const PEER: &str = "[[peer]]\nname = \"r2\"\nremote = \"192.0.2.2\"\npsk_file = \"r2.psk\"\n";

/// The configuration with `extra` added to `table`, as comparable text
/// (`Debug`: the PSK shows as its length only).
fn configured(dir: &TempDir, table: &str, extra: &str) -> Result<String, String> {
    let text = match table {
        "[daemon]" => format!("[daemon]\n{extra}{PEER}"),
        "[[peer]]" => format!("{PEER}{extra}"),
        "[peer.lifetimes]" => format!("{PEER}[peer.lifetimes]\n{extra}"),
        other => panic!("unknown table {other:?} in the page"),
    };
    let file = dir.join("aokd.toml");
    let config = Config::parse(&text, &file).map_err(|e| format!("{e}\n{text}"))?;
    Ok(format!("{:?} {:?}", config.daemon, config.peers))
}

#[test]
fn the_configuration_page_lists_every_key_with_its_real_default() {
    let page = std::fs::read_to_string(PAGE).expect("dist/aokd.toml.5");
    let entries = entries(&page);
    let tables = [
        ("[daemon]", "[daemon]\n"),
        ("[[peer]]", "[[peer]]\n"),
        ("[peer.lifetimes]", "[[peer]]\n[peer.lifetimes]\n"),
        // Its keys without a default in the tag (a group needs certificate
        // files to load): the key set is compared, each says its default.
        ("[[peer_group]]", "[[peer_group]]\n"),
    ];
    let mut checked = 0;
    for (table, prefix) in tables {
        let known = parser_keys(prefix);
        let listed: BTreeSet<String> = entries
            .iter()
            .filter(|e| e.table == table)
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(
            listed, known,
            "the keys of {table} in dist/aokd.toml.5 (left) are not the parser's (right)"
        );
        checked += known.len();
    }
    assert_eq!(
        parser_keys(""),
        BTreeSet::from([
            "daemon".to_owned(),
            "peer".to_owned(),
            "peer_group".to_owned()
        ]),
        "a new top-level table needs its section in dist/aokd.toml.5"
    );

    let dir = TempDir::new("config-page");
    dir.psk("r2.psk");
    let mut with_default = 0;
    for e in &entries {
        match &e.default {
            Some(value) => {
                let unset = configured(&dir, &e.table, "").expect("the base configuration");
                let set = configured(&dir, &e.table, &format!("{} = {value}\n", e.key))
                    .unwrap_or_else(|err| {
                        panic!(
                            "{} {}: the stated default is refused: {err}",
                            e.table, e.key
                        )
                    });
                assert_eq!(
                    set, unset,
                    "{} {} = {value}: not the default (setting it changes the configuration)",
                    e.table, e.key
                );
                with_default += 1;
            }
            None => assert!(
                e.body.contains("Default:") || e.body.contains("Required."),
                "{} {}: neither a default nor \"Required.\" in {:?}",
                e.table,
                e.key,
                e.body
            ),
        }
    }
    println!(
        "{checked} keys in dist/aokd.toml.5, {with_default} with a default checked against the parser"
    );
}
