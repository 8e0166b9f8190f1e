//! Each test container's in-memory file system, and the `tar`/`test`/`cat` commands that
//! `kubectl cp` runs through exec.
//!
//! `kubectl cp` has no API of its own: it execs `test -d DEST` to see whether the destination
//! is a directory, pipes a tar archive into `tar -xmf - -C DIR` to upload, and reads the
//! output of `tar cf - PATH` to download (with `--retries`, `sh -c "tar cf - PATH | tail
//! -c+N"` to resume). The built-in command runner ([`super::process`]) calls into this module
//! for those argv forms, so a copy through the tunnel exercises the same bytes and exit codes
//! a real container with GNU tar would produce. The tree starts with `/` and `/tmp` and is
//! capped at [`FileTree::CAPACITY`] bytes of file content.

use std::{
    collections::BTreeMap,
    io::Read,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

/// One entry of the tree.
#[derive(Debug, Clone)]
enum Node {
    Dir { mode: u32, mtime: u64 },
    File { data: Bytes, mode: u32, mtime: u64 },
    Symlink { target: String, mtime: u64 },
}

/// A container's files: absolute normalized paths (`/`, `/tmp/a`) to entries.
#[derive(Debug)]
pub(crate) struct FileTree {
    nodes: BTreeMap<String, Node>,
    bytes: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves `path` against `base` (both may be relative); `..` above `/` stays at `/`.
pub(crate) fn normalize(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let start = if path.starts_with('/') { "" } else { base };
    for p in start.split('/').chain(path.split('/')) {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// What a command run against the tree produced (like a process: output and exit code).
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) code: i32,
}

impl Outcome {
    fn fail(stderr: String, code: i32) -> Self {
        Self {
            stderr: stderr.into_bytes(),
            code,
            ..Self::default()
        }
    }
}

/// Parsed `tar` command line.
#[derive(Debug, Default)]
pub(crate) struct TarArgs {
    pub(crate) create: bool,
    pub(crate) extract: bool,
    pub(crate) file: Option<String>,
    pub(crate) dir: Option<String>,
    pub(crate) no_same_permissions: bool,
    pub(crate) paths: Vec<String>,
}

/// Parses the tar argv forms kubectl uses (`cf - PATH`, `-xmf - -C DIR`,
/// `--no-same-permissions --no-same-owner -xmf -`) and the usual variations.
pub(crate) fn parse_tar(args: &[&str]) -> Result<TarArgs, String> {
    let mut t = TarArgs::default();
    let mut i = 0;
    let mut bundle_seen = false;
    while i < args.len() {
        let arg = args[i];
        i += 1;
        if let Some(long) = arg.strip_prefix("--") {
            match long {
                "no-same-permissions" => t.no_same_permissions = true,
                "no-same-owner" | "same-owner" | "preserve-permissions" | "verbose" => {}
                "extract" | "get" => t.extract = true,
                "create" => t.create = true,
                _ => return Err(format!("tar: unrecognized option '{arg}'")),
            }
            continue;
        }
        let letters = match arg.strip_prefix('-') {
            Some(l) if !l.is_empty() => l,
            // The first word may be a bundle without a dash ("cf", "xf"), like GNU tar.
            _ if !bundle_seen && t.paths.is_empty() && !arg.is_empty() => arg,
            _ => {
                t.paths.push(arg.to_owned());
                continue;
            }
        };
        bundle_seen = true;
        for c in letters.chars() {
            match c {
                'c' => t.create = true,
                'x' => t.extract = true,
                'm' | 'v' | 'o' | 'p' => {}
                'f' | 'C' => {
                    let Some(value) = args.get(i) else {
                        return Err(format!("tar: option requires an argument -- '{c}'"));
                    };
                    i += 1;
                    if c == 'f' {
                        t.file = Some((*value).to_owned());
                    } else {
                        t.dir = Some((*value).to_owned());
                    }
                }
                other => return Err(format!("tar: invalid option -- '{other}'")),
            }
        }
    }
    if t.create == t.extract {
        return Err("tar: You must specify one of the '-Acdtrux' options".to_owned());
    }
    if t.file.as_deref().is_some_and(|f| f != "-") {
        return Err("tar: only '-f -' (stdin/stdout) is supported here".to_owned());
    }
    Ok(t)
}

impl FileTree {
    /// Most bytes of file content a container holds.
    pub(crate) const CAPACITY: u64 = 512 << 20;

    pub(crate) fn new() -> Self {
        let mut nodes = BTreeMap::new();
        let t = now();
        nodes.insert(
            "/".to_owned(),
            Node::Dir {
                mode: 0o755,
                mtime: t,
            },
        );
        nodes.insert(
            "/tmp".to_owned(),
            Node::Dir {
                mode: 0o1777,
                mtime: t,
            },
        );
        Self { nodes, bytes: 0 }
    }

    pub(crate) fn is_dir(&self, path: &str) -> bool {
        matches!(
            self.nodes.get(&normalize("/", path)),
            Some(Node::Dir { .. })
        )
    }

    pub(crate) fn is_file(&self, path: &str) -> bool {
        matches!(
            self.nodes.get(&normalize("/", path)),
            Some(Node::File { .. })
        )
    }

    pub(crate) fn exists(&self, path: &str) -> bool {
        self.nodes.contains_key(&normalize("/", path))
    }

    /// Content of a regular file.
    pub(crate) fn read(&self, path: &str) -> Option<Bytes> {
        match self.nodes.get(&normalize("/", path)) {
            Some(Node::File { data, .. }) => Some(data.clone()),
            _ => None,
        }
    }

    /// Writes a regular file, creating its parent directories (`mkdir -p`).
    pub(crate) fn write(&mut self, path: &str, data: Bytes, mode: u32) -> Result<(), String> {
        let path = normalize("/", path);
        if path == "/" {
            return Err("/: Is a directory".to_owned());
        }
        self.mkdir_all(parent(&path))?;
        let old = match self.nodes.get(&path) {
            Some(Node::Dir { .. }) => return Err(format!("{path}: Is a directory")),
            Some(Node::File { data, .. }) => data.len() as u64,
            _ => 0,
        };
        let new_total = self.bytes - old + data.len() as u64;
        if new_total > Self::CAPACITY {
            return Err(format!("{path}: Cannot write: No space left on device"));
        }
        self.bytes = new_total;
        self.nodes.insert(
            path,
            Node::File {
                data,
                mode,
                mtime: now(),
            },
        );
        Ok(())
    }

    fn mkdir_all(&mut self, path: &str) -> Result<(), String> {
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            match self.nodes.get(&cur) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(format!("{cur}: Not a directory")),
                None => {
                    self.nodes.insert(
                        cur.clone(),
                        Node::Dir {
                            mode: 0o755,
                            mtime: now(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// `test -d|-e|-f PATH`.
    pub(crate) fn test(&self, args: &[&str]) -> Outcome {
        let ok = match args {
            ["-d", p] => self.is_dir(p),
            ["-f", p] => self.is_file(p),
            ["-e", p] => self.exists(p),
            _ => {
                return Outcome::fail("test: only -d, -e and -f are supported\n".to_owned(), 2);
            }
        };
        Outcome {
            code: i32::from(!ok),
            ..Outcome::default()
        }
    }

    /// `cat FILE...`.
    pub(crate) fn cat(&self, files: &[&str]) -> Outcome {
        let mut out = Outcome::default();
        for f in files {
            match self.nodes.get(&normalize("/", f)) {
                Some(Node::File { data, .. }) => out.stdout.extend_from_slice(data),
                Some(Node::Dir { .. }) => {
                    out.stderr
                        .extend_from_slice(format!("cat: {f}: Is a directory\n").as_bytes());
                    out.code = 1;
                }
                _ => {
                    out.stderr.extend_from_slice(
                        format!("cat: {f}: No such file or directory\n").as_bytes(),
                    );
                    out.code = 1;
                }
            }
        }
        out
    }

    /// `tar -x`: extracts the archive in `input` under `-C DIR` (default `/`), like GNU tar
    /// with `-m` (modification times are not restored).
    pub(crate) fn extract(&mut self, args: &TarArgs, input: &[u8]) -> Outcome {
        let dir = normalize("/", args.dir.as_deref().unwrap_or("/"));
        if !self.is_dir(&dir) {
            return Outcome::fail(
                format!(
                    "tar: {}: Cannot open: No such file or directory\ntar: Error is not recoverable: exiting now\n",
                    args.dir.as_deref().unwrap_or("/")
                ),
                2,
            );
        }
        let mut out = Outcome::default();
        let mut archive = tar::Archive::new(input);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => return Outcome::fail(format!("tar: {e}\n"), 2),
        };
        let warn = |out: &mut Outcome, msg: String| {
            out.stderr.extend_from_slice(msg.as_bytes());
            out.code = 2;
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    warn(
                        &mut out,
                        format!(
                            "tar: This does not look like a tar archive ({e})\ntar: Exiting with failure status due to previous errors\n"
                        ),
                    );
                    return out;
                }
            };
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if name.split('/').any(|p| p == "..") {
                warn(
                    &mut out,
                    format!("tar: {name}: Member name contains '..'\n"),
                );
                continue;
            }
            let path = normalize(&dir, name.trim_start_matches('/'));
            let header = entry.header();
            let mut mode = header.mode().unwrap_or(0o644) & 0o7777;
            if args.no_same_permissions {
                mode &= !0o022;
            }
            let kind = header.entry_type();
            let result = if kind.is_dir() {
                self.mkdir_all(&path).map(|()| {
                    if let Some(Node::Dir { mode: m, .. }) = self.nodes.get_mut(&path) {
                        *m = mode;
                    }
                })
            } else if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                self.mkdir_all(parent(&path)).and_then(|()| {
                    if matches!(self.nodes.get(&path), Some(Node::Dir { .. })) {
                        return Err(format!("{name}: Cannot create symlink: File exists"));
                    }
                    self.remove_file(&path);
                    self.nodes.insert(
                        path.clone(),
                        Node::Symlink {
                            target,
                            mtime: now(),
                        },
                    );
                    Ok(())
                })
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                let mut data = Vec::new();
                match entry.read_to_end(&mut data) {
                    Ok(_) => self
                        .write(&path, Bytes::from(data), mode)
                        .map_err(|e| format!("{name}: Cannot open: {e}")),
                    Err(e) => Err(format!("{name}: {e}")),
                }
            } else {
                Err(format!(
                    "{name}: unsupported entry type in this test container"
                ))
            };
            if let Err(e) = result {
                warn(&mut out, format!("tar: {e}\n"));
            }
        }
        if out.code != 0 {
            out.stderr
                .extend_from_slice(b"tar: Exiting with failure status due to previous errors\n");
        }
        out
    }

    fn remove_file(&mut self, path: &str) {
        if let Some(Node::File { data, .. }) = self.nodes.remove(path) {
            self.bytes -= data.len() as u64;
        }
    }

    /// `tar -c`: an archive of `args.paths` (recursively), padded to 10 KiB records like GNU
    /// tar. Member names lose their leading `/`, with GNU tar's notice on stderr.
    pub(crate) fn create(&self, args: &TarArgs) -> Outcome {
        let mut out = Outcome::default();
        let mut builder = tar::Builder::new(Vec::new());
        if args.paths.is_empty() {
            return Outcome::fail(
                "tar: Cowardly refusing to create an empty archive\n".to_owned(),
                2,
            );
        }
        if args.paths.iter().any(|p| p.starts_with('/')) {
            out.stderr
                .extend_from_slice(b"tar: Removing leading `/' from member names\n");
        }
        let base = normalize("/", args.dir.as_deref().unwrap_or("/"));
        for p in &args.paths {
            let path = normalize(&base, p);
            if !self.nodes.contains_key(&path) {
                out.stderr.extend_from_slice(
                    format!("tar: {p}: Cannot stat: No such file or directory\n").as_bytes(),
                );
                out.code = 2;
                continue;
            }
            // Members are named as given (relative to -C), without the leading slash; a
            // directory is followed by everything below it.
            let member = p.trim_start_matches('/').trim_end_matches('/');
            let below = if path == "/" {
                "/".to_owned()
            } else {
                format!("{path}/")
            };
            let members = self.nodes.get_key_value(&path).into_iter().chain(
                self.nodes
                    .range(below.clone()..)
                    .take_while(|(k, _)| k.starts_with(&below))
                    .filter(|(k, _)| **k != path),
            );
            for (node_path, node) in members {
                let rest = if path == "/" {
                    node_path.as_str()
                } else {
                    &node_path[path.len()..]
                };
                let name = format!("{member}{rest}");
                let name = name.trim_start_matches('/');
                if let Err(e) = append(&mut builder, name, node) {
                    return Outcome::fail(format!("tar: {name}: {e}\n"), 2);
                }
            }
        }
        let mut data = match builder.into_inner() {
            Ok(d) => d,
            Err(e) => return Outcome::fail(format!("tar: {e}\n"), 2),
        };
        let record = 10 * 1024;
        let padded = data.len().div_ceil(record) * record;
        data.resize(padded, 0);
        if out.code != 0 {
            out.stderr
                .extend_from_slice(b"tar: Exiting with failure status due to previous errors\n");
        }
        out.stdout = data;
        out
    }
}

fn append(builder: &mut tar::Builder<Vec<u8>>, name: &str, node: &Node) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    match node {
        Node::Dir { mode, mtime } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(*mode);
            header.set_mtime(*mtime);
            header.set_size(0);
            let name = if name.is_empty() {
                "./".to_owned()
            } else {
                format!("{name}/")
            };
            builder.append_data(&mut header, name, std::io::empty())
        }
        Node::File { data, mode, mtime } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            header.set_mtime(*mtime);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, name, &data[..])
        }
        Node::Symlink { target, mtime } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_mtime(*mtime);
            header.set_size(0);
            builder.append_link(&mut header, name, target)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o640);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("/", "tmp/../etc/./x/"), "/etc/x");
        assert_eq!(normalize("/tmp", "a"), "/tmp/a");
        assert_eq!(normalize("/tmp", "/b"), "/b");
        assert_eq!(normalize("/", "../../.."), "/");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
    }

    #[test]
    fn tar_argv_forms_kubectl_sends() {
        let t = parse_tar(&["-xmf", "-", "-C", "/tmp/d"]).unwrap();
        assert!(t.extract && !t.create);
        assert_eq!(t.dir.as_deref(), Some("/tmp/d"));
        let t = parse_tar(&["--no-same-permissions", "--no-same-owner", "-xmf", "-"]).unwrap();
        assert!(t.extract && t.no_same_permissions && t.dir.is_none());
        let t = parse_tar(&["cf", "-", "/tmp/foo"]).unwrap();
        assert!(t.create);
        assert_eq!(t.paths, ["/tmp/foo"]);
        assert!(parse_tar(&["cf", "/tmp/out.tar", "/tmp"]).is_err());
        assert!(parse_tar(&["-xzf", "-"]).is_err());
        assert!(parse_tar(&["-f", "-"]).is_err());
    }

    #[test]
    fn extract_then_create_round_trips() {
        let mut tree = FileTree::new();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let archive = tar_of(&[("dir/a.txt", b"hello\n"), ("big.bin", &big)]);
        let args = parse_tar(&["-xmf", "-", "-C", "/tmp"]).unwrap();
        let out = tree.extract(&args, &archive);
        assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(tree.read("/tmp/dir/a.txt").unwrap(), &b"hello\n"[..]);
        assert!(tree.is_dir("/tmp/dir"));
        assert_eq!(tree.test(&["-d", "/tmp/dir"]).code, 0);
        assert_eq!(tree.test(&["-d", "/tmp/big.bin"]).code, 1);

        let out = tree.create(&parse_tar(&["cf", "-", "/tmp/big.bin"]).unwrap());
        assert_eq!(out.code, 0);
        assert_eq!(out.stdout.len() % 10240, 0);
        assert_eq!(out.stderr, b"tar: Removing leading `/' from member names\n");
        let mut a = tar::Archive::new(&out.stdout[..]);
        let mut entries = a.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), b"tmp/big.bin");
        assert_eq!(e.header().mode().unwrap(), 0o640);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert!(data == big);
        drop(e);
        assert!(entries.next().is_none());

        // A directory: itself, then everything below it, and nothing beside it.
        tree.write("/tmp/dir-x", Bytes::from_static(b"not inside"), 0o644)
            .unwrap();
        let out = tree.create(&parse_tar(&["cf", "-", "/tmp/dir"]).unwrap());
        let mut a = tar::Archive::new(&out.stdout[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect();
        assert_eq!(names, ["tmp/dir/", "tmp/dir/a.txt"]);
    }

    #[test]
    fn errors_look_like_gnu_tar() {
        let mut tree = FileTree::new();
        let args = parse_tar(&["-xmf", "-", "-C", "/nope"]).unwrap();
        let out = tree.extract(&args, &tar_of(&[("a", b"x")]));
        assert_eq!(out.code, 2);
        assert!(String::from_utf8_lossy(&out.stderr).contains("/nope: Cannot open"));
        let out = tree.create(&parse_tar(&["cf", "-", "/missing"]).unwrap());
        assert_eq!(out.code, 2);
        assert!(String::from_utf8_lossy(&out.stderr).contains("Cannot stat"));
        // The tar crate refuses to write `..`; build that header by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        let out = tree.extract(
            &parse_tar(&["-xmf", "-"]).unwrap(),
            &b.into_inner().unwrap(),
        );
        assert_eq!(out.code, 2);
        assert!(!tree.exists("/escape"));
        let out = tree.cat(&["/tmp"]);
        assert_eq!(out.code, 1);
    }
}
