//! The GCS's saved tables: one file in the session directory, [`FILE`], so that `manta start
//! --head` on the same session restores the cluster's nodes, workers, jobs, actors, placement
//! groups and KV after the head died.
//!
//! The file is rewritten whole after every event that changed what is saved
//! (`GcsTables::take_dirty`), before the event's answers are sent, so whatever a member was
//! told is on disk: written to a new private temporary file (mode `0600`, `O_EXCL`,
//! `O_NOFOLLOW`), then renamed over the old one, so a reader never sees a half-written file.
//! It survives the head process being killed (the kernel has the bytes); it is not synced to
//! the disk, so a crash of the machine may lose the last changes. Records are the cluster's
//! own messages (`GcsTables::snapshot` says which), each framed as its tag (8 bytes, little
//! endian), its length (4 bytes) and its flatbuffers payload, which `proto::decode` verifies
//! on reading. Nothing secret is in it: the token never is.

use std::io;
use std::path::{Path, PathBuf};

use flatbuffers::FlatBufferBuilder;

use super::proto::{self, Msg};
use super::session;

/// The file's name in the session directory.
pub(crate) const FILE: &str = "gcs_tables";

/// The largest saved file read back (the tables are bounded: 1,000 dead actors, 100 removed
/// groups, the live rest).
const MAX_FILE: u64 = 256 << 20;

/// Where the GCS saves its tables.
pub(crate) struct GcsStore {
    path: PathBuf,
    tmp: PathBuf,
    fbb: FlatBufferBuilder<'static>,
    buf: Vec<u8>,
}

impl GcsStore {
    /// The store in session directory `dir`.
    pub(crate) fn new(dir: &Path) -> GcsStore {
        GcsStore {
            path: dir.join(FILE),
            tmp: dir.join(format!(".{FILE}.tmp")),
            fbb: FlatBufferBuilder::new(),
            buf: Vec::new(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The saved records, or `None` when nothing was saved.
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
        let mut records = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if rest.len() < 12 {
                return Err(bad("truncated record header".into()));
            }
            let tag = u64::from_le_bytes(rest[..8].try_into().unwrap_or_default());
            let len = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default()) as usize;
            let Some(payload) = rest.get(12..12 + len) else {
                return Err(bad("truncated record".into()));
            };
            records.push(proto::decode(tag, payload).map_err(|e| bad(e.to_string()))?);
            rest = &rest[12 + len..];
        }
        Ok(Some(records))
    }

    /// Saves `records`, replacing what was saved.
    pub(crate) fn save(&mut self, records: &[Msg]) -> io::Result<()> {
        self.buf.clear();
        for m in records {
            self.fbb.reset();
            let payload = proto::encode(m, &mut self.fbb);
            let len = u32::try_from(payload.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
            self.buf.extend_from_slice(&m.tag_u64().to_le_bytes());
            self.buf.extend_from_slice(&len.to_le_bytes());
            self.buf.extend_from_slice(payload);
        }
        session::write_private_bytes(&self.tmp, &self.buf)?;
        std::fs::rename(&self.tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::proto::{ActorInfo, Node};
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "manta-gcs-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn records_round_trip_through_a_private_file() {
        let d = dir();
        let mut store = GcsStore::new(&d);
        assert!(store.load().unwrap().is_none());
        let records = vec![
            Msg::GcsCounters {
                version: 1,
                next_node: 3,
                next_worker: 5,
                next_job: 2,
                address: "127.0.0.1:1".into(),
            },
            Msg::Nodes {
                request_id: 0,
                nodes: vec![Node {
                    node_id: 1,
                    alive: true,
                    ..Node::default()
                }],
            },
            Msg::Actors {
                request_id: 0,
                actors: vec![ActorInfo {
                    actor_id: 9,
                    name: "svc".into(),
                    alive: true,
                    ..ActorInfo::default()
                }],
            },
        ];
        store.save(&records).unwrap();
        store.save(&records).unwrap();
        assert_eq!(store.load().unwrap(), Some(records));
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!d.join(format!(".{FILE}.tmp")).exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_or_open_file_is_refused() {
        let d = dir();
        let mut store = GcsStore::new(&d);
        store.save(&[Msg::Subscribe { request_id: 1 }]).unwrap();
        let mut bytes = std::fs::read(store.path()).unwrap();
        bytes.truncate(bytes.len() - 1);
        std::fs::write(store.path(), &bytes).unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("mode"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
