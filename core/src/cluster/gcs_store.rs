//! The GCS's saved tables: one file in the session directory, [`FILE`], so that `manta start
//! --head` on the same session restores the cluster's nodes, workers, jobs, actors, placement
//! groups and KV after the head died.
//!
//! The file is a journal of records, each the cluster's own message for one entry of the
//! tables (`GcsTables::snapshot` says which), keyed by what it is about ([`Key`]: the header,
//! a node, a worker, a job, a KV entry, an actor, a group). After every event that changed
//! saved entries (`GcsTables::take_changes`), before the event's answers are sent, the store
//! appends, in one write, their new records and a `GcsForget` for each entry that is gone;
//! so whatever a member was told is in the file, and a change costs its own size, not the
//! tables'. Read back, the last record of each key wins. When the journal has grown past twice the size of its live
//! records (and 64 KiB), the file is rewritten whole: into a new private temporary file (mode
//! `0600`, `O_EXCL`, `O_NOFOLLOW`), renamed over the old one, so a reader never sees a
//! half-written file. The first save of a process rewrites it too.
//!
//! Records are framed as tag (8 bytes, little endian), length (4 bytes) and the flatbuffers
//! payload, which `proto::decode` verifies on reading. A record cut short at the end (the
//! process killed during its append, before the event's answers were sent) is dropped with a
//! warning. Nothing secret is in it: the token never is.
//!
//! Durability: the file survives the head process being killed (the kernel has the bytes),
//! and, with `gcs_sync` (the default), a crash of the machine too for every change a member
//! was told of: each save is one write, and one `sync_data` covers it before the event's
//! answers go (an event's changes, however many entries, are synced once; the GCS syncs
//! the saves of several events at once, `gcs.rs`), and a rewrite syncs the new file
//! before renaming it over the old one and then syncs the directory, so that the rename (and
//! a file's creation) is on the disk too (the first rewrite of a process syncs the session
//! directory's parent as well, for a session directory just made). This holds as far as the disk keeps what it
//! acknowledged. Without `gcs_sync`, a crash of the machine may lose the last changes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flatbuffers::FlatBufferBuilder;

use super::proto::{self, Msg, PgOp};
use super::session;

/// The file's name in the session directory.
pub(crate) const FILE: &str = "gcs_tables";

/// The largest saved file read back (the live tables are bounded: 1,000 dead actors, 100
/// removed groups, the live rest; the journal is compacted at twice their size).
const MAX_FILE: u64 = 256 << 20;

/// A journal below this size is never compacted.
const MIN_COMPACT: u64 = 64 << 10;

/// What a saved record is about: the header, or one entry of a table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Header,
    Node(u64),
    Worker(u64),
    Job(u64),
    Kv(String),
    Actor(u64),
    Group(u64),
}

impl Key {
    /// The key of a saved record (`None`: not a record of the saved tables).
    pub(crate) fn of(m: &Msg) -> Option<Key> {
        Some(match m {
            Msg::GcsCounters { .. } => Key::Header,
            Msg::Nodes { nodes, .. } if nodes.len() == 1 => Key::Node(nodes[0].node_id),
            Msg::RejoinWorker { index, .. } => Key::Worker(*index),
            Msg::JobEvent { job_id, .. } => Key::Job(*job_id),
            Msg::KvPut { key, .. } => Key::Kv(key.clone()),
            Msg::RegisterActor { actor, .. } => Key::Actor(actor.actor_id),
            Msg::Pg {
                op: PgOp::Groups,
                group,
                ..
            } => Key::Group(group.pg_id),
            _ => return None,
        })
    }

    /// The record that says this key's entry is gone.
    fn forget(&self) -> Msg {
        let (kind, id, name) = match self {
            Key::Header => (0, 0, String::new()),
            Key::Node(id) => (1, *id, String::new()),
            Key::Worker(id) => (2, *id, String::new()),
            Key::Job(id) => (3, *id, String::new()),
            Key::Kv(name) => (4, 0, name.clone()),
            Key::Actor(id) => (5, *id, String::new()),
            Key::Group(id) => (6, *id, String::new()),
        };
        Msg::GcsForget { kind, id, name }
    }

    fn forgotten(kind: u8, id: u64, name: String) -> Option<Key> {
        Some(match kind {
            1 => Key::Node(id),
            2 => Key::Worker(id),
            3 => Key::Job(id),
            4 => Key::Kv(name),
            5 => Key::Actor(id),
            6 => Key::Group(id),
            _ => return None,
        })
    }
}

/// Where the GCS saves its tables.
pub(crate) struct GcsStore {
    path: PathBuf,
    tmp: PathBuf,
    fbb: FlatBufferBuilder<'static>,
    buf: Vec<u8>,
    /// The file opened for appending (after the first save).
    file: Option<File>,
    /// The journal's size, and the size of its live records when last rewritten whole.
    size: u64,
    live: u64,
    /// Whether saves are synced to the disk (`gcs_sync`).
    sync: bool,
    /// Whether an append syncs itself (else its owner syncs [`GcsStore::sync_handle`]).
    sync_appends: bool,
    /// A journal below this size is never compacted ([`MIN_COMPACT`]).
    min_compact: u64,
    /// Whether the session directory's entry in its parent was synced (once per process).
    parent_synced: bool,
}

impl GcsStore {
    /// The store in session directory `dir`.
    pub(crate) fn new(dir: &Path) -> GcsStore {
        GcsStore {
            path: dir.join(FILE),
            tmp: dir.join(format!(".{FILE}.tmp")),
            fbb: FlatBufferBuilder::new(),
            buf: Vec::new(),
            file: None,
            size: 0,
            live: 0,
            sync: true,
            sync_appends: true,
            min_compact: MIN_COMPACT,
            parent_synced: false,
        }
    }

    /// The store, compacting a journal from `bytes` (tests: to compact often).
    #[cfg(test)]
    pub(crate) fn compacting_from(mut self, bytes: u64) -> GcsStore {
        self.min_compact = bytes;
        self
    }

    /// The store, syncing each save to the disk or not (`gcs_sync`; on by default).
    pub(crate) fn synced(mut self, sync: bool) -> GcsStore {
        self.sync = sync;
        self
    }

    /// Appends are no longer synced by the store: its owner syncs them, several at once,
    /// through [`GcsStore::sync_handle`] (group commit, `gcs.rs`). Whether saves are to be
    /// synced at all.
    pub(crate) fn defer_append_sync(&mut self) -> bool {
        self.sync_appends = false;
        self.sync
    }

    /// The journal's file, to sync what was appended to it (`None` before the first save or
    /// after a failed one: the next save rewrites and syncs it whole).
    pub(crate) fn sync_handle(&self) -> Option<File> {
        self.file.as_ref().and_then(|f| f.try_clone().ok())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The saved records (the last of each key; the header first), or `None` when nothing was
    /// saved.
    pub(crate) fn load(&self) -> io::Result<Option<Vec<Msg>>> {
        let bytes = match session::read_private_bytes(&self.path, MAX_FILE) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", self.path.display()),
            )
        };
        let mut order: Vec<Key> = Vec::new();
        let mut live: HashMap<Key, Msg> = HashMap::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let frame = (rest.len() >= 12).then(|| {
                let tag = u64::from_le_bytes(rest[..8].try_into().unwrap_or_default());
                let len = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
                (tag, len as usize)
            });
            let Some((tag, payload)) =
                frame.and_then(|(tag, len)| Some((tag, rest.get(12..12 + len)?)))
            else {
                // The last append was cut short: its event was never answered.
                tracing::warn!(path = %self.path.display(), bytes = rest.len(), "the GCS tables end in a partial record: dropped");
                break;
            };
            let m = proto::decode(tag, payload).map_err(|e| bad(e.to_string()))?;
            rest = &rest[12 + payload.len()..];
            match m {
                Msg::GcsForget { kind, id, name } => {
                    let k = Key::forgotten(kind, id, name)
                        .ok_or_else(|| bad(format!("a forgotten entry of no table ({kind})")))?;
                    live.remove(&k);
                }
                m => {
                    let k = Key::of(&m)
                        .ok_or_else(|| bad(format!("unexpected record {}", m.name())))?;
                    if live.insert(k.clone(), m).is_none() {
                        order.push(k);
                    }
                }
            }
        }
        let mut records: Vec<Msg> = live.remove(&Key::Header).into_iter().collect();
        if records.is_empty() {
            return Err(bad("no header".into()));
        }
        records.extend(order.iter().filter_map(|k| live.remove(k)));
        Ok(Some(records))
    }

    /// Whether the next save must rewrite the file whole (with every record): the first save
    /// of this process, after a failed append, and when the journal has grown too long.
    pub(crate) fn needs_rewrite(&self) -> bool {
        self.file.is_none() || self.size > self.min_compact.max(2 * self.live)
    }

    /// Appends `changes`: each entry's new record, or `None` for an entry that is gone.
    pub(crate) fn append(&mut self, changes: &[(Key, Option<Msg>)]) -> io::Result<()> {
        self.buf.clear();
        for (k, m) in changes {
            match m {
                Some(m) => frame(&mut self.fbb, &mut self.buf, m)?,
                None => frame(&mut self.fbb, &mut self.buf, &k.forget())?,
            }
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("the saved tables are not open"));
        };
        let written =
            file.write_all(&self.buf)
                .and_then(|()| match self.sync && self.sync_appends {
                    // One sync for every record of the save (module doc).
                    true => file.sync_data(),
                    false => Ok(()),
                });
        if let Err(e) = written {
            // A part that went is dropped on reading; the next save rewrites the file.
            self.file = None;
            return Err(e);
        }
        self.size += self.buf.len() as u64;
        Ok(())
    }

    /// Writes `records` (every entry) as the whole file, write-then-rename, and opens it for
    /// appending.
    pub(crate) fn rewrite(&mut self, records: &[Msg]) -> io::Result<()> {
        self.file = None;
        self.buf.clear();
        for m in records {
            frame(&mut self.fbb, &mut self.buf, m)?;
        }
        session::write_private_bytes(&self.tmp, &self.buf)?;
        if self.sync {
            // Its bytes on the disk before the rename makes it the tables.
            open_no_follow(&self.tmp)?.sync_data()?;
        }
        std::fs::rename(&self.tmp, &self.path)?;
        if self.sync
            && let Some(dir) = self.path.parent()
        {
            // The rename (and the file's creation) on the disk too; the first time, the
            // session directory's own entry as well (it may be new).
            File::open(dir)?.sync_all()?;
            if !self.parent_synced {
                if let Some(parent) = dir.parent() {
                    File::open(parent)?.sync_all()?;
                }
                self.parent_synced = true;
            }
        }
        self.size = self.buf.len() as u64;
        self.live = self.size;
        self.file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)?,
        );
        Ok(())
    }
}

/// Opens `path` to read, not following a symbolic link.
fn open_no_follow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Appends `m` to `buf`, framed.
fn frame(fbb: &mut FlatBufferBuilder<'static>, buf: &mut Vec<u8>, m: &Msg) -> io::Result<()> {
    fbb.reset();
    let payload = proto::encode(m, fbb);
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
    buf.extend_from_slice(&m.tag_u64().to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::proto::{ActorInfo, Node};
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("manta-gcs-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn header(next_worker: u64) -> Msg {
        Msg::GcsCounters {
            version: 1,
            next_node: 3,
            next_worker,
            next_job: 2,
            address: "127.0.0.1:1".into(),
        }
    }

    fn actor(id: u64, alive: bool) -> Msg {
        Msg::RegisterActor {
            request_id: 0,
            actor: ActorInfo {
                actor_id: id,
                name: format!("a{id}"),
                alive,
                ..ActorInfo::default()
            },
        }
    }

    fn node(id: u64) -> Msg {
        Msg::Nodes {
            request_id: 0,
            nodes: vec![Node {
                node_id: id,
                alive: true,
                ..Node::default()
            }],
        }
    }

    fn size(store: &GcsStore) -> u64 {
        std::fs::metadata(store.path()).unwrap().len()
    }

    /// What the shell does: the changes appended, or everything rewritten when due.
    fn save(store: &mut GcsStore, all: &[Msg], changes: &[(Key, Option<Msg>)]) {
        if store.needs_rewrite() {
            store.rewrite(all).unwrap();
        } else {
            store.append(changes).unwrap();
        }
    }

    #[test]
    fn changes_are_appended_and_read_back_as_the_last_state() {
        let d = dir("journal");
        let mut store = GcsStore::new(&d);
        assert!(store.load().unwrap().is_none());
        let mut records = vec![header(5), node(1)];
        records.extend((1..=100).map(|i| actor(i, true)));
        assert!(store.needs_rewrite());
        save(&mut store, &records, &[]);
        let whole = size(&store);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // One actor dies, one is forgotten, the header moves: three small records appended.
        records[0] = header(6);
        records[2] = actor(1, false);
        records.remove(3);
        let changes = vec![
            (Key::Header, Some(header(6))),
            (Key::Actor(1), Some(actor(1, false))),
            (Key::Actor(2), None),
        ];
        assert!(!store.needs_rewrite());
        save(&mut store, &records, &changes);
        let grown = size(&store) - whole;
        assert!(
            grown > 0 && grown < whole / 10,
            "appended {grown} of {whole}"
        );
        assert_eq!(store.load().unwrap(), Some(records.clone()));
        // A new store (a restarted head) reads the same, and its first save rewrites.
        let mut again = GcsStore::new(&d);
        assert_eq!(again.load().unwrap(), Some(records.clone()));
        assert!(again.needs_rewrite());
        save(&mut again, &records, &[]);
        assert!(size(&again) < whole);
        assert_eq!(again.load().unwrap(), Some(records));
        assert!(!d.join(format!(".{FILE}.tmp")).exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_long_journal_is_rewritten_whole() {
        let d = dir("compact");
        // 5,000 saves: not synced, to stay quick (the first test syncs).
        let mut store = GcsStore::new(&d).synced(false);
        let mut records = vec![header(1)];
        save(&mut store, &records, &[]);
        // Actors come and go: without rewrites the journal would grow without end.
        for i in 0..5_000u64 {
            records.push(actor(i, true));
            let mut changes = vec![(Key::Actor(i), Some(actor(i, true)))];
            if records.len() > 11 {
                if let Some(Key::Actor(old)) = Key::of(&records[1]) {
                    changes.push((Key::Actor(old), None));
                }
                records.remove(1);
            }
            save(&mut store, &records, &changes);
        }
        assert!(size(&store) <= 2 * MIN_COMPACT, "{} bytes", size(&store));
        assert_eq!(store.load().unwrap(), Some(records));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_record_cut_short_is_dropped_and_a_damaged_or_open_file_refused() {
        let d = dir("damaged");
        let mut store = GcsStore::new(&d);
        let records = vec![header(1), node(1)];
        save(&mut store, &records, &[]);
        save(&mut store, &records, &[(Key::Node(2), Some(node(2)))]);
        let mut bytes = std::fs::read(store.path()).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(store.path(), &bytes).unwrap();
        assert_eq!(store.load().unwrap(), Some(records));
        // A record of no table is an error, not skipped.
        let mut fbb = FlatBufferBuilder::new();
        let mut bytes = Vec::new();
        frame(&mut fbb, &mut bytes, &header(1)).unwrap();
        frame(&mut fbb, &mut bytes, &Msg::Subscribe { request_id: 1 }).unwrap();
        std::fs::write(store.path(), &bytes).unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("unexpected record"), "{e}");
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("mode"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
