//! The Debian packages inside the agent image: the pinned list
//! (`images/agent/debian-packages.txt`), fetching the exact versions with
//! `apt-get download`, checking that every runtime dependency is in the list,
//! and unpacking each package's files into a layer (with its copyright file,
//! without manuals and other documentation).
//!
//! Versions are pinned so that two builds from the same commit use the same
//! bytes. When Debian replaces a pinned version (security and point releases
//! do), `cargo xtask image --update-packages` rewrites the pins to the current
//! candidates.

use super::oci::{Entry, Kind, Layer, normalize};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Dependencies deliberately left out: they serve only the package manager and
/// maintainer scripts, which never run in the image.
pub const OMITTED: &[&str] = &["dpkg", "debianutils"];

/// One pinned package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub version: String,
    /// SPDX expression of the package's licence (from its copyright file).
    pub license: String,
}

/// Parses the pin list: `name version spdx-licence...` per line; `#` starts a
/// comment.
pub fn parse_pins(text: &str) -> Result<Vec<Pin>> {
    let mut pins: Vec<Pin> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(version)) = (fields.next(), fields.next()) else {
            bail!("line {}: {line:?} needs `name version licence`", n + 1);
        };
        let license = fields.collect::<Vec<_>>().join(" ");
        if license.is_empty() {
            bail!(
                "line {}: {name} has no licence; add its SPDX expression from /usr/share/doc/{name}/copyright",
                n + 1
            );
        }
        if pins.iter().any(|p| p.name == name) {
            bail!("line {}: {name} is listed twice; keep one line", n + 1);
        }
        pins.push(Pin {
            name: name.into(),
            version: version.into(),
            license,
        });
    }
    Ok(pins)
}

/// Rewrites the version column of a pin list, keeping comments and order.
pub fn repin(text: &str, versions: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let body = line.split('#').next().unwrap_or("");
        let mut fields = body.split_whitespace();
        match (
            fields.next(),
            fields.next(),
            versions.get(body.split_whitespace().next().unwrap_or("")),
        ) {
            (Some(name), Some(old), Some(new)) => {
                let rest: Vec<&str> = fields.collect();
                out.push_str(&format!("{name} {new} {}", rest.join(" ")));
                if let Some((_, comment)) = line.split_once('#') {
                    out.push_str(&format!(" #{comment}"));
                }
                let _ = old;
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The names a `Depends:`/`Pre-Depends:` field requires: for each clause the
/// alternatives (`a (>= 1) | b`), version constraints and arch qualifiers
/// dropped.
pub fn parse_depends(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|clause| {
            clause
                .split('|')
                .map(|alt| {
                    let name = alt.trim().split([' ', '(']).next().unwrap_or("");
                    name.split(':').next().unwrap_or("").to_string()
                })
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|alts| !alts.is_empty())
        .collect()
}

/// Checks that every dependency of every pinned package is pinned too (or
/// deliberately omitted). `depends` maps a package to its Depends and
/// Pre-Depends fields.
pub fn check_closure(pins: &[Pin], depends: &BTreeMap<String, String>) -> Result<()> {
    let mut problems = Vec::new();
    for pin in pins {
        let field = depends.get(&pin.name).map(String::as_str).unwrap_or("");
        for alts in parse_depends(field) {
            let ok = alts
                .iter()
                .any(|a| OMITTED.contains(&a.as_str()) || pins.iter().any(|p| &p.name == a));
            if !ok {
                problems.push(format!("{} needs {}", pin.name, alts.join(" | ")));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the Debian package list is missing dependencies ({}); add them to images/agent/debian-packages.txt",
            problems.join("; ")
        );
    }
    Ok(())
}

/// Downloads (or reuses from `cache`) the .deb of each pin; returns their paths.
pub fn fetch(pins: &[Pin], cache: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pin in pins {
        let dir = cache.join(&pin.name).join(pin.version.replace(':', "%3a"));
        if let Some(deb) = find_deb(&dir)? {
            out.push(deb);
            continue;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let spec = format!("{}={}", pin.name, pin.version);
        eprintln!("+ apt-get download {spec}");
        let result = Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(&dir)
            .output()
            .context("run apt-get download (is this a Debian system with apt?)")?;
        if !result.status.success() {
            bail!(
                "apt-get download {spec} failed: {}; run `apt-get update`, and if Debian no longer has that version run `cargo xtask image --update-packages`",
                String::from_utf8_lossy(&result.stderr).trim()
            );
        }
        match find_deb(&dir)? {
            Some(deb) => out.push(deb),
            None => bail!(
                "apt-get download {spec} wrote no .deb into {}",
                dir.display()
            ),
        }
    }
    Ok(out)
}

fn find_deb(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut debs = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "deb") {
            debs.push(path);
        }
    }
    debs.sort();
    Ok(debs.pop())
}

/// A control field of a .deb (`dpkg-deb -f`).
pub fn control_field(deb: &Path, field: &str) -> Result<String> {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .context("run dpkg-deb (install dpkg)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -f {} failed: {}; delete it so it is downloaded again",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether a file of a package belongs in the image. Manuals, info pages,
/// locales, lintian overrides, menus, the iconv modules and documentation
/// other than copyright files are left out: none of the tools need them.
pub fn keep(path: &str, kind: &Kind) -> bool {
    const DROP: &[&str] = &[
        "usr/share/man/",
        "usr/share/info/",
        "usr/share/locale/",
        "usr/share/lintian/",
        "usr/share/menu/",
        "usr/share/bug/",
        "usr/share/doc-base/",
        "usr/lib/x86_64-linux-gnu/gconv/",
    ];
    if DROP.iter().any(|d| path.starts_with(d)) {
        return false;
    }
    if let Some(rest) = path.strip_prefix("usr/share/doc/") {
        // Keep the per-package directory (or its symlink to the source
        // package's) and the copyright file; drop changelogs and the rest.
        return match kind {
            Kind::Dir => true,
            Kind::Symlink(_) => !rest.contains('/'),
            Kind::File(_) => rest.ends_with("/copyright"),
        };
    }
    true
}

/// Unpacks a .deb's files into `layer` (owner root, mtime fixed later by the
/// layer writer). Hard links become copies of their target.
pub fn unpack_into(deb: &Path, layer: &mut Layer) -> Result<()> {
    let tarball = fsys_tarfile(deb)?;
    let mut archive = tar::Archive::new(tarball.as_slice());
    // The regular files so far, for the hard links that follow them.
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for entry in archive
        .entries()
        .with_context(|| format!("read the files of {}", deb.display()))?
    {
        let mut entry = entry.with_context(|| format!("read the files of {}", deb.display()))?;
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(path) = normalize(&raw)? else {
            continue;
        };
        let mode = entry.header().mode()? & 0o7777;
        let kind = entry_kind(deb, &mut entry, &path, mode, &mut files)?;
        if keep(&path, &kind) {
            let mode = if matches!(kind, Kind::Symlink(_)) {
                0o777
            } else {
                mode
            };
            layer
                .insert(
                    &path,
                    Entry {
                        kind,
                        mode,
                        uid: 0,
                        gid: 0,
                    },
                )
                .with_context(|| format!("unpack {}", deb.display()))?;
        }
    }
    Ok(())
}

/// The package's files as a tar archive (`dpkg-deb --fsys-tarfile`).
fn fsys_tarfile(deb: &Path) -> Result<Vec<u8>> {
    let out = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .output()
        .context("run dpkg-deb --fsys-tarfile (install dpkg)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb --fsys-tarfile {} failed: {}; delete it so it is downloaded again",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// What one archive entry at `path` becomes in the image. A regular file is
/// also remembered in `files`, where a later hard link to it finds its data.
fn entry_kind<R: Read>(
    deb: &Path,
    entry: &mut tar::Entry<'_, R>,
    path: &str,
    mode: u32,
    files: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<Kind> {
    Ok(match entry.header().entry_type() {
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            files.insert(path.to_string(), (data.clone(), mode));
            Kind::File(data)
        }
        tar::EntryType::Symlink => Kind::Symlink(
            entry
                .link_name()?
                .context("symlink without a target")?
                .to_string_lossy()
                .into_owned(),
        ),
        tar::EntryType::Link => {
            let target = entry
                .link_name()?
                .context("hard link without a target")?
                .to_string_lossy()
                .into_owned();
            let target = normalize(&target)?.unwrap_or_default();
            let (data, _) = files.get(&target).cloned().with_context(|| {
                format!(
                    "{}: hard link {path} to {target}, which comes later or is missing",
                    deb.display()
                )
            })?;
            Kind::File(data)
        }
        other => bail!(
            "{}: {path} has entry type {other:?}, which images do not carry",
            deb.display()
        ),
    })
}

/// Checks that the layer carries a copyright file for every package, directly
/// or through the package's doc symlink.
pub fn check_licences(pins: &[Pin], layer: &Layer) -> Result<()> {
    for pin in pins {
        let doc = format!("usr/share/doc/{}", pin.name);
        let direct = format!("{doc}/copyright");
        let found = match layer.get(&doc).map(|e| &e.kind) {
            Some(Kind::Symlink(target)) => {
                let via = format!("usr/share/doc/{}/copyright", target.trim_end_matches('/'));
                matches!(layer.get(&via).map(|e| &e.kind), Some(Kind::File(_)))
            }
            _ => matches!(layer.get(&direct).map(|e| &e.kind), Some(Kind::File(_))),
        };
        if !found {
            bail!(
                "{} ships no copyright file in the image; its licence must be included",
                pin.name
            );
        }
    }
    Ok(())
}

/// The current candidate version of each package (for `--update-packages`).
pub fn candidates(names: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for name in names {
        let result = Command::new("apt-cache")
            .args(["policy", name])
            .output()
            .context("run apt-cache")?;
        let text = String::from_utf8_lossy(&result.stdout);
        let candidate = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:").map(str::trim))
            .filter(|v| *v != "(none)")
            .with_context(|| format!("apt has no candidate for {name}; run `apt-get update`"))?;
        out.insert(name.clone(), candidate.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_comments_and_reject_bad_lines() {
        let pins = parse_pins(
            "# tools\niptables 1.8.9-2 GPL-2.0-or-later  # the main one\n\nlibc6 2.36-9+deb12u14 LGPL-2.1-or-later AND GPL-2.0-or-later\n",
        )
        .unwrap();
        assert_eq!(pins.len(), 2);
        assert_eq!(pins[1].license, "LGPL-2.1-or-later AND GPL-2.0-or-later");
        for bad in ["iptables\n", "iptables 1.8\n", "a 1 MIT\na 2 MIT\n"] {
            assert!(parse_pins(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repin_changes_only_versions() {
        let text = "# head\niptables 1.8.9-2 GPL-2.0-or-later # why\nipset 7.17-1 GPL-2.0-only\n";
        let versions = BTreeMap::from([("iptables".to_string(), "1.8.9-3".to_string())]);
        assert_eq!(
            repin(text, &versions),
            "# head\niptables 1.8.9-3 GPL-2.0-or-later # why\nipset 7.17-1 GPL-2.0-only\n"
        );
    }

    #[test]
    fn depends_fields_reduce_to_alternatives_of_names() {
        assert_eq!(
            parse_depends("libc6 (>= 2.34), libmnl0 (>= 1.0.3-4~), netbase | foo:any (>> 1)"),
            vec![
                vec!["libc6".to_string()],
                vec!["libmnl0".to_string()],
                vec!["netbase".to_string(), "foo".to_string()],
            ]
        );
        assert!(parse_depends("").is_empty());
    }

    #[test]
    fn closure_check_names_what_is_missing() {
        let pins = parse_pins("a 1 MIT\nb 1 MIT\n").unwrap();
        let deps = BTreeMap::from([
            ("a".to_string(), "b (>= 1), dpkg".to_string()),
            ("b".to_string(), "c | b".to_string()),
        ]);
        check_closure(&pins, &deps).unwrap();
        let deps = BTreeMap::from([("a".to_string(), "libz".to_string())]);
        let err = check_closure(&pins, &deps).unwrap_err().to_string();
        assert!(err.contains("a needs libz"), "{err}");
    }

    #[test]
    fn only_copyright_files_of_the_documentation_are_kept() {
        let file = Kind::File(vec![]);
        assert!(keep("usr/share/doc/iptables/copyright", &file));
        assert!(!keep("usr/share/doc/iptables/changelog.Debian.gz", &file));
        assert!(keep(
            "usr/share/doc/libip4tc2",
            &Kind::Symlink("iptables".into())
        ));
        assert!(!keep("usr/share/man/man8/iptables.8.gz", &file));
        assert!(keep("usr/sbin/xtables-nft-multi", &file));
    }

    #[test]
    fn licences_are_found_directly_or_through_doc_symlinks() {
        let pins = parse_pins("a 1 MIT\nb 1 MIT\n").unwrap();
        let mut layer = Layer::new();
        layer
            .file("usr/share/doc/a/copyright", b"x".to_vec(), 0o644)
            .unwrap();
        assert!(check_licences(&pins, &layer).is_err());
        layer.symlink("usr/share/doc/b", "a").unwrap();
        check_licences(&pins, &layer).unwrap();
    }
}
