//! The launch contract between the compute manager and a `lakebed pagefs` process started
//! ahead of its mount (`--assignment-from-stdin`): a member of the manager's warm pool.
//!
//! Such a process starts with nothing of a tenant: its argv names only the page store. It
//! does the tenant-free work a mount would otherwise pay for ([`warm_up`], plus its runtime
//! and its connected channel to the page store), prints [`WAITING`], then reads one
//! [`Assignment`] from standard input and from then on runs as a pagefs started with the
//! assignment's parameters as arguments would.
//!
//! # The message
//!
//! Lines of text, `\n`-terminated, at most [`MAX_MESSAGE_BYTES`] in all:
//!
//! ```text
//! pagefs-assignment 1
//! mountpoint /data/endpoints/main/pgdata
//! timeline ep-main
//! local-dir /data/endpoints/main/local
//! uid 105
//! gid 109
//! cache-mib 1024
//! io-timeout-ms 60000
//! prewarm yes
//! traceparent 00-...          (optional: the wake's trace context)
//! tracestate ...              (optional)
//! tenant NAME                 (the keys, when pages are sealed: exactly the
//! lineage TIMELINE...          `--keys-from-stdin` input, `end` included)
//! dek VERSION BASE64
//! end
//! ```
//!
//! Without keys the message ends with `end` after the fields. Every field but the trace
//! context is required, none may repeat, and an unknown line is an error: a message is
//! taken whole or refused. Keys travel only over this pipe (never argv or environment); the
//! encoded text and the decoded DEK bytes are zeroized when dropped.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use lakebed_pageserver_api::TimelineId;
use zeroize::Zeroizing;

/// The first line of an assignment, with the format's version.
pub const HEADER: &str = "pagefs-assignment 1";

/// What a pool member prints on standard output once its tenant-free preparation is done
/// and it waits for its assignment.
pub const WAITING: &str = "waiting";

/// What a pool member prints on standard output as soon as it has read its assignment,
/// before it mounts: the manager hands the mount to another member, or starts a pagefs,
/// if this does not come quickly (a member that hangs, stopped or stuck, never takes a
/// wake down with it).
pub const ASSIGNED: &str = "assigned";

/// The most an assignment may take, in bytes (a few DEK versions fit many times over).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// One mount handed to a waiting pagefs process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Where to mount (an existing empty directory); absolute.
    pub mountpoint: PathBuf,
    /// The timeline served.
    pub timeline: TimelineId,
    /// The compute's local directory for the cache and scratch files; absolute.
    pub local_dir: PathBuf,
    /// Owner of every file.
    pub uid: u32,
    /// Group of every file.
    pub gid: u32,
    /// Local cache size in MiB.
    pub cache_mib: u64,
    /// How long reads and fsyncs wait for an unreachable page store before EIO.
    pub io_timeout: Duration,
    /// Whether to prewarm the cache from the previous compute's heat list.
    pub prewarm: bool,
    /// The W3C trace context of the wake (`traceparent`, `tracestate`), if traced.
    pub trace: Vec<(String, String)>,
    /// The tenant's keys; `None`: pages are sent plain.
    pub keys: Option<AssignedKeys>,
}

/// The tenant's keys for one mount, as the compute manager unwrapped them: the DEK bytes
/// are zeroized on drop and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AssignedKeys {
    /// The tenant.
    pub tenant: String,
    /// The timeline and its ancestors, own first.
    pub lineage: Vec<String>,
    /// DEK versions and their 32 bytes.
    pub deks: Vec<(u32, Zeroizing<[u8; 32]>)>,
}

impl std::fmt::Debug for AssignedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignedKeys")
            .field("tenant", &self.tenant)
            .field("lineage", &self.lineage)
            .field(
                "versions",
                &self.deks.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why an assignment could not be encoded or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// The first line is not [`HEADER`].
    #[error("not a pagefs assignment (first line must be {HEADER:?})")]
    Header,
    /// Input ended before the closing `end`.
    #[error("the assignment ended before \"end\"")]
    Truncated,
    /// More than [`MAX_MESSAGE_BYTES`].
    #[error("the assignment is longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// A line that is no field of the format.
    #[error("unexpected line in the assignment: {0:?}")]
    UnknownLine(String),
    /// A field given twice.
    #[error("{0} given twice")]
    Repeated(&'static str),
    /// A required field is missing.
    #[error("{0} missing")]
    Missing(&'static str),
    /// A field's value does not parse; the value is not echoed (it may be a key).
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Something after `end`.
    #[error("text after \"end\"")]
    Trailing,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> AssignmentError {
    AssignmentError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A path as one line's value: absolute, UTF-8, no line breaks.
fn path_text<'a>(
    field: &'static str,
    path: &'a std::path::Path,
) -> Result<&'a str, AssignmentError> {
    let text = path.to_str().ok_or_else(|| invalid(field, "not UTF-8"))?;
    if !path.is_absolute() {
        return Err(invalid(field, "not an absolute path"));
    }
    if text.contains(['\n', '\r']) {
        return Err(invalid(field, "contains a line break"));
    }
    Ok(text)
}

impl Assignment {
    /// The message, ready to write to the process's standard input (zeroized on drop).
    ///
    /// # Errors
    ///
    /// [`AssignmentError::Invalid`] for a path that is relative, not UTF-8 or holds a line
    /// break, or a trace value or tenant that holds whitespace breaks.
    pub fn encode(&self) -> Result<Zeroizing<String>, AssignmentError> {
        use std::fmt::Write;
        let mut out = Zeroizing::new(String::with_capacity(512));
        let mountpoint = path_text("mountpoint", &self.mountpoint)?;
        let local_dir = path_text("local-dir", &self.local_dir)?;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{HEADER}\nmountpoint {mountpoint}\ntimeline {}\nlocal-dir {local_dir}\nuid {}\ngid {}\n\
             cache-mib {}\nio-timeout-ms {}\nprewarm {}\n",
            self.timeline.as_str(),
            self.uid,
            self.gid,
            self.cache_mib,
            self.io_timeout.as_millis(),
            if self.prewarm { "yes" } else { "no" },
        );
        for (name, value) in &self.trace {
            let field = match name.as_str() {
                "traceparent" => "traceparent",
                "tracestate" => "tracestate",
                _ => return Err(invalid("trace", format!("unknown header {name:?}"))),
            };
            // An empty value (W3C: no tracestate) is the same as none.
            if value.is_empty() {
                continue;
            }
            if value.contains(['\n', '\r']) {
                return Err(invalid(field, "holds a line break"));
            }
            let _ = writeln!(out, "{field} {value}");
        }
        match &self.keys {
            Some(keys) => out.push_str(&keys.encode()?),
            None => out.push_str("end\n"),
        }
        if out.len() > MAX_MESSAGE_BYTES {
            return Err(AssignmentError::TooLong);
        }
        Ok(out)
    }

    /// Decodes one whole message (see the module docs): `lines` up to and including `end`.
    ///
    /// # Errors
    ///
    /// [`AssignmentError`]: anything but exactly one well-formed message.
    pub fn decode<S: AsRef<str>>(
        lines: impl IntoIterator<Item = S>,
    ) -> Result<Self, AssignmentError> {
        let mut lines = lines.into_iter();
        let mut size = 0;
        let mut next = move || -> Result<Option<S>, AssignmentError> {
            let Some(line) = lines.next() else {
                return Ok(None);
            };
            size += line.as_ref().len() + 1;
            if size > MAX_MESSAGE_BYTES {
                return Err(AssignmentError::TooLong);
            }
            Ok(Some(line))
        };
        match next()? {
            Some(l) if l.as_ref() == HEADER => {}
            Some(_) => return Err(AssignmentError::Header),
            None => return Err(AssignmentError::Truncated),
        }
        let mut f = Fields::default();
        let mut keys = KeysDecoder::default();
        loop {
            let line = next()?.ok_or(AssignmentError::Truncated)?;
            let line = line.as_ref();
            if keys.started() || matches!(first_word(line), "tenant" | "lineage" | "dek") {
                if keys.feed(line)? {
                    break;
                }
                continue;
            }
            if line == "end" {
                break;
            }
            f.feed(line)?;
        }
        if next()?.is_some() {
            return Err(AssignmentError::Trailing);
        }
        f.finish(keys.finish()?)
    }
}

fn first_word(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or_default()
}

/// Sets `slot` once.
fn once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), AssignmentError> {
    if slot.is_some() {
        return Err(AssignmentError::Repeated(field));
    }
    *slot = Some(value);
    Ok(())
}

fn number<T: std::str::FromStr>(field: &'static str, text: &str) -> Result<T, AssignmentError> {
    text.parse()
        .map_err(|_| invalid(field, "not a non-negative integer"))
}

/// The fields of an assignment as they are read.
#[derive(Default)]
struct Fields {
    mountpoint: Option<PathBuf>,
    timeline: Option<TimelineId>,
    local_dir: Option<PathBuf>,
    uid: Option<u32>,
    gid: Option<u32>,
    cache_mib: Option<u64>,
    io_timeout: Option<Duration>,
    prewarm: Option<bool>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Fields {
    fn feed(&mut self, line: &str) -> Result<(), AssignmentError> {
        let (name, value) = line.split_once(' ').unwrap_or((line, ""));
        let path = |field| {
            let p = PathBuf::from(value);
            if value.is_empty() || !p.is_absolute() {
                return Err(invalid(field, "not an absolute path"));
            }
            Ok(p)
        };
        match name {
            "mountpoint" => once(&mut self.mountpoint, "mountpoint", path("mountpoint")?),
            "local-dir" => once(&mut self.local_dir, "local-dir", path("local-dir")?),
            "timeline" => {
                let id = value
                    .parse()
                    .map_err(|e: lakebed_pageserver_api::TimelineIdError| {
                        invalid("timeline", e.to_string())
                    })?;
                once(&mut self.timeline, "timeline", id)
            }
            "uid" => once(&mut self.uid, "uid", number("uid", value)?),
            "gid" => once(&mut self.gid, "gid", number("gid", value)?),
            "cache-mib" => once(
                &mut self.cache_mib,
                "cache-mib",
                number("cache-mib", value)?,
            ),
            "io-timeout-ms" => {
                let ms: u64 = number("io-timeout-ms", value)?;
                once(
                    &mut self.io_timeout,
                    "io-timeout-ms",
                    Duration::from_millis(ms),
                )
            }
            "prewarm" => {
                let on = match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(invalid("prewarm", "not yes or no")),
                };
                once(&mut self.prewarm, "prewarm", on)
            }
            "traceparent" if !value.is_empty() => {
                once(&mut self.traceparent, "traceparent", value.to_owned())
            }
            "tracestate" if !value.is_empty() => {
                once(&mut self.tracestate, "tracestate", value.to_owned())
            }
            _ => Err(AssignmentError::UnknownLine(
                // The name only: a malformed key line must not be echoed.
                name.chars().take(32).collect(),
            )),
        }
    }

    fn finish(self, keys: Option<AssignedKeys>) -> Result<Assignment, AssignmentError> {
        use AssignmentError::Missing;
        let mut trace = Vec::new();
        if let Some(v) = self.traceparent {
            trace.push(("traceparent".to_owned(), v));
        }
        if let Some(v) = self.tracestate {
            trace.push(("tracestate".to_owned(), v));
        }
        Ok(Assignment {
            mountpoint: self.mountpoint.ok_or(Missing("mountpoint"))?,
            timeline: self.timeline.ok_or(Missing("timeline"))?,
            local_dir: self.local_dir.ok_or(Missing("local-dir"))?,
            uid: self.uid.ok_or(Missing("uid"))?,
            gid: self.gid.ok_or(Missing("gid"))?,
            cache_mib: self.cache_mib.ok_or(Missing("cache-mib"))?,
            io_timeout: self.io_timeout.ok_or(Missing("io-timeout-ms"))?,
            prewarm: self.prewarm.ok_or(Missing("prewarm"))?,
            trace,
            keys,
        })
    }
}

impl AssignedKeys {
    /// The `--keys-from-stdin` lines: `tenant NAME`, `lineage TIMELINE...`, one `dek
    /// VERSION BASE64` per version, `end` (zeroized on drop).
    ///
    /// # Errors
    ///
    /// [`AssignmentError::Invalid`] for a tenant or timeline that is empty or holds
    /// whitespace (it would not read back as one word).
    pub fn encode(&self) -> Result<Zeroizing<String>, AssignmentError> {
        let word = |w: &str| !w.is_empty() && !w.contains(char::is_whitespace);
        if !word(&self.tenant) {
            return Err(invalid("tenant", "empty or holds whitespace"));
        }
        if self.lineage.is_empty() || !self.lineage.iter().all(|t| word(t)) {
            return Err(invalid("lineage", "empty or holds whitespace"));
        }
        let mut text = Zeroizing::new(format!(
            "tenant {}\nlineage {}\n",
            self.tenant,
            self.lineage.join(" ")
        ));
        for (version, dek) in &self.deks {
            let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(**dek));
            text.push_str(&format!("dek {version} {}\n", b64.as_str()));
        }
        text.push_str("end\n");
        Ok(text)
    }

    /// Reads the `--keys-from-stdin` lines up to and including `end`.
    ///
    /// # Errors
    ///
    /// [`AssignmentError`] for a malformed block, or one that ends early.
    pub fn decode<S: AsRef<str>>(
        lines: impl IntoIterator<Item = S>,
    ) -> Result<Self, AssignmentError> {
        let mut keys = KeysDecoder::default();
        for line in lines {
            if keys.feed(line.as_ref())? {
                return keys.finish()?.ok_or(AssignmentError::Missing("tenant"));
            }
        }
        Err(AssignmentError::Truncated)
    }
}

/// The key lines as they are read.
#[derive(Default)]
struct KeysDecoder {
    tenant: Option<String>,
    lineage: Option<Vec<String>>,
    deks: Vec<(u32, Zeroizing<[u8; 32]>)>,
    started: bool,
}

impl KeysDecoder {
    fn started(&self) -> bool {
        self.started
    }

    /// Takes one line; `true` at `end`.
    fn feed(&mut self, line: &str) -> Result<bool, AssignmentError> {
        self.started = true;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("tenant") => {
                let name = words.next().ok_or(invalid("tenant", "no name"))?;
                once(&mut self.tenant, "tenant", name.to_owned())?;
            }
            Some("lineage") => {
                let lineage: Vec<String> = words.map(str::to_owned).collect();
                if lineage.is_empty() {
                    return Err(invalid("lineage", "no timeline"));
                }
                once(&mut self.lineage, "lineage", lineage)?;
            }
            Some("dek") => {
                let version: u32 = words
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or(invalid("dek", "no version"))?;
                let raw = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(words.next().unwrap_or_default())
                        .map_err(|_| invalid("dek", format!("version {version} is not base64")))?,
                );
                if raw.len() != 32 {
                    return Err(invalid("dek", format!("version {version} is not 32 bytes")));
                }
                if self.deks.iter().any(|(v, _)| *v == version) {
                    return Err(AssignmentError::Repeated("dek version"));
                }
                let mut key = Zeroizing::new([0u8; 32]);
                key.copy_from_slice(&raw);
                self.deks.push((version, key));
            }
            Some("end") => return Ok(true),
            Some(other) => {
                return Err(AssignmentError::UnknownLine(
                    other.chars().take(32).collect(),
                ));
            }
            None => return Err(AssignmentError::UnknownLine(String::new())),
        }
        Ok(false)
    }

    /// The keys, if any key line was read.
    fn finish(self) -> Result<Option<AssignedKeys>, AssignmentError> {
        if !self.started {
            return Ok(None);
        }
        let tenant = self.tenant.ok_or(AssignmentError::Missing("tenant"))?;
        let lineage = self.lineage.ok_or(AssignmentError::Missing("lineage"))?;
        if self.deks.is_empty() {
            return Err(AssignmentError::Missing("dek"));
        }
        Ok(Some(AssignedKeys {
            tenant,
            lineage,
            deks: self.deks,
        }))
    }
}

/// The tenant-free preparation a pool member does before it waits: the system's random
/// source answered once (the per-boot key and every nonce come from it, and its first use
/// in a process may wait for the kernel's pool) and AES-GCM set up once with a throwaway
/// key (aws-lc's CPU feature detection and code paths), so the mount pays for neither.
///
/// # Errors
///
/// The random source failed; the mount would fail the same way.
pub fn warm_up() -> Result<(), aws_lc_rs::error::Unspecified> {
    let key = super::seal::BootKey::generate()?;
    let mut block = vec![0u8; super::layout::BLOCK_SIZE];
    let aad = super::seal::Aad {
        domain: super::seal::Domain::Scratch,
        ino: 0,
        block: 0,
    };
    let _ = key.seal(aad, &mut block);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample(keys: bool) -> Assignment {
        Assignment {
            mountpoint: PathBuf::from("/data/endpoints/main/pgdata"),
            timeline: "ep-main".parse().unwrap(),
            local_dir: PathBuf::from("/data/endpoints/main dir/local"),
            uid: 105,
            gid: 109,
            cache_mib: 1024,
            io_timeout: Duration::from_millis(60_000),
            prewarm: true,
            trace: vec![(
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            )],
            keys: keys.then(|| AssignedKeys {
                tenant: "acme".into(),
                lineage: vec!["ep-main".into(), "tpl-1-pg15".into()],
                deks: vec![
                    (1, Zeroizing::new([7u8; 32])),
                    (2, Zeroizing::new([9u8; 32])),
                ],
            }),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn an_assignment_reads_back_as_written() {
        for keys in [false, true] {
            let a = sample(keys);
            let text = a.encode().unwrap();
            assert_eq!(Assignment::decode(lines(&text)).unwrap(), a);
        }
        let mut plain = sample(false);
        plain.prewarm = false;
        plain.trace.clear();
        let text = plain.encode().unwrap();
        assert!(text.ends_with("prewarm no\nend\n"), "{}", text.as_str());
        assert_eq!(Assignment::decode(lines(&text)).unwrap(), plain);
    }

    #[test]
    fn the_keys_are_the_keys_from_stdin_input_byte_for_byte() {
        let a = sample(true);
        let text = a.encode().unwrap();
        let keys = a.keys.as_ref().unwrap().encode().unwrap();
        assert!(text.ends_with(keys.as_str()));
        assert!(keys.starts_with("tenant acme\nlineage ep-main tpl-1-pg15\ndek 1 "));
        assert_eq!(
            AssignedKeys::decode(lines(&keys)).unwrap(),
            a.keys.clone().unwrap()
        );
        // Debug never shows a key.
        let shown = format!("{:?}", a);
        assert!(!shown.contains("[7, 7"), "{shown}");
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(!shown.contains(&b64), "{shown}");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = sample(true).encode().unwrap();
        let good: Vec<&str> = lines(&good);
        let with = |f: &dyn Fn(&mut Vec<String>)| {
            let mut l: Vec<String> = good.iter().map(|s| s.to_string()).collect();
            f(&mut l);
            Assignment::decode(l)
        };
        use AssignmentError::*;
        assert_eq!(Assignment::decode(Vec::<&str>::new()), Err(Truncated));
        assert_eq!(with(&|l| l[0] = "pagefs-assignment 2".into()), Err(Header));
        assert_eq!(with(&|l| l[0] = "tenant x".into()), Err(Header));
        assert_eq!(
            with(&|l| {
                l.pop();
            }),
            Err(Truncated)
        );
        assert_eq!(with(&|l| l.push("uid 1".into())), Err(Trailing));
        assert_eq!(with(&|l| l.insert(1, "uid 1".into())), Err(Repeated("uid")));
        assert_eq!(
            with(&|l| l.retain(|x| !x.starts_with("gid "))),
            Err(Missing("gid"))
        );
        assert_eq!(
            with(&|l| l.retain(|x| !x.starts_with("mountpoint "))),
            Err(Missing("mountpoint"))
        );
        assert_eq!(
            with(&|l| l.insert(1, "bogus 1".into())),
            Err(UnknownLine("bogus".into()))
        );
        assert!(matches!(
            with(&|l| l[1] = "mountpoint relative/dir".into()),
            Err(Invalid {
                field: "mountpoint",
                ..
            })
        ));
        assert!(matches!(
            with(&|l| l[2] = "timeline Not_An_Id".into()),
            Err(Invalid {
                field: "timeline",
                ..
            })
        ));
        assert!(matches!(
            with(&|l| l[4] = "uid -1".into()),
            Err(Invalid { field: "uid", .. })
        ));
        assert!(matches!(
            with(&|l| l[8] = "prewarm maybe".into()),
            Err(Invalid {
                field: "prewarm",
                ..
            })
        ));
        // Keys: a short DEK, a bad one, a repeated version, none at all, no tenant.
        let dek = good.iter().position(|l| l.starts_with("dek 1 ")).unwrap();
        let short = format!(
            "dek 1 {}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 16])
        );
        let err = with(&|l| l[dek] = short.clone()).unwrap_err();
        assert_eq!(err.to_string(), "dek: version 1 is not 32 bytes");
        let err = with(&|l| l[dek] = "dek 1 !!!secret!!!".into()).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(
            with(&|l| l[dek + 1] = l[dek].clone()),
            Err(Repeated("dek version"))
        );
        assert_eq!(
            with(&|l| l.retain(|x| !x.starts_with("dek "))),
            Err(Missing("dek"))
        );
        assert_eq!(
            with(&|l| l.retain(|x| !x.starts_with("tenant "))),
            Err(Missing("tenant"))
        );
        // A line with a key on it is never echoed back whole.
        let err = with(&|l| l.insert(dek, "xdek 1 c2VjcmV0".into())).unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        // Oversized input stops at the cap, before the line is looked at.
        let long = [
            HEADER.to_owned(),
            format!("mountpoint /{}", "a".repeat(MAX_MESSAGE_BYTES)),
        ];
        assert_eq!(Assignment::decode(long), Err(TooLong));
    }

    #[test]
    fn an_empty_trace_value_is_left_out() {
        let mut a = sample(false);
        a.trace.push(("tracestate".into(), String::new()));
        let text = a.encode().unwrap();
        assert!(!text.contains("tracestate"), "{}", text.as_str());
        a.trace.pop();
        assert_eq!(Assignment::decode(lines(&text)).unwrap(), a);
    }

    #[test]
    fn what_cannot_be_written_as_one_line_is_not_encoded() {
        let mut a = sample(false);
        a.mountpoint = PathBuf::from("/a\nuid 0");
        assert!(matches!(
            a.encode(),
            Err(AssignmentError::Invalid {
                field: "mountpoint",
                ..
            })
        ));
        let mut a = sample(false);
        a.local_dir = PathBuf::from("local");
        assert!(a.encode().is_err());
        let mut a = sample(true);
        if let Some(k) = a.keys.as_mut() {
            k.tenant = "a b".into();
        }
        assert!(a.encode().is_err());
    }

    #[test]
    fn warming_up_needs_no_tenant() {
        warm_up().unwrap();
    }
}
