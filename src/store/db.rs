//! Nix's SQLite database, schema version 10, as Nix 2.x reads and writes it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::StoreError;
use super::info::PathInfo;
use super::path::StorePath;

/// The schema version Nix 2.x writes to `nix/var/nix/db/schema`.
pub const SCHEMA_VERSION: u32 = 10;

/// Nix's `schema.sql` for version 10; the statements match what Nix 2.8 creates.
const SCHEMA: &str = r#"
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// One path to register, with the outputs it declares if it is a derivation.
pub struct Registration<'a> {
    pub info: &'a PathInfo,
    pub drv_outputs: Vec<(String, StorePath)>,
}

pub struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating if needed) `db_dir/db.sqlite` with the `schema` file beside it. A database
    /// of another schema version is refused rather than changed.
    pub fn open(db_dir: &Path) -> Result<Self, StoreError> {
        let schema_file = db_dir.join("schema");
        check_schema(db_dir, true)?;
        let conn = Connection::open(db_dir.join("db.sqlite")).map_err(StoreError::Db)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))
            .map_err(StoreError::Db)?;
        // The settings Nix itself uses for its database.
        conn.execute_batch(
            "pragma foreign_keys = 1; pragma journal_mode = wal; pragma synchronous = normal;",
        )
        .map_err(StoreError::Db)?;
        conn.execute_batch(SCHEMA).map_err(StoreError::Db)?;
        std::fs::write(&schema_file, SCHEMA_VERSION.to_string())
            .map_err(|e| StoreError::io(&schema_file, e))?;
        Ok(Self { conn })
    }

    /// Opens `db_dir/db.sqlite` to read only, changing nothing on the disk (no lock, journal or
    /// shared-memory file is created): `None` when there is no database yet.
    pub fn open_read_only(db_dir: &Path) -> Result<Option<Self>, StoreError> {
        let file = db_dir.join("db.sqlite");
        if !file.exists() {
            return Ok(None);
        }
        check_schema(db_dir, false)?;
        // A write-ahead log with content means a writer has it open (Nix's daemon): read through
        // its shared memory. Otherwise the file is all there is, and `immutable` keeps SQLite
        // from creating anything beside it.
        let wal_in_use = std::fs::metadata(db_dir.join("db.sqlite-wal")).is_ok_and(|m| m.len() > 0);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let uri = format!(
            "file:{}{}",
            percent_encode_path(&file),
            if wal_in_use { "" } else { "?immutable=1" }
        );
        let conn = Connection::open_with_flags(uri, flags).map_err(StoreError::Db)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))
            .map_err(StoreError::Db)?;
        Ok(Some(Self { conn }))
    }

    pub fn is_valid(&self, path: &StorePath) -> Result<bool, StoreError> {
        self.conn
            .query_row(
                "select 1 from ValidPaths where path = ?",
                [path.to_absolute()],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(StoreError::Db)
    }

    /// Which of `paths` are registered.
    pub fn valid_paths<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("select 1 from ValidPaths where path = ?")
            .map_err(StoreError::Db)?;
        let mut valid = BTreeSet::new();
        for path in paths {
            if stmt.exists([path.to_absolute()]).map_err(StoreError::Db)? {
                valid.insert(path.clone());
            }
        }
        Ok(valid)
    }

    /// Registers a batch of paths in one transaction. Every reference must be valid already or
    /// come earlier in the batch (or be the path itself).
    pub fn register(&mut self, batch: &[Registration<'_>]) -> Result<(), StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let tx = self.conn.transaction().map_err(StoreError::Db)?;
        {
            let mut add = tx
                .prepare_cached(
                    "insert into ValidPaths
                        (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca)
                     values (?1, ?2, ?3, ?4, ?5, null, ?6, ?7)
                     on conflict(path) do update set
                        hash = excluded.hash, narSize = excluded.narSize,
                        sigs = excluded.sigs, ca = excluded.ca",
                )
                .map_err(StoreError::Db)?;
            let mut id_of = tx
                .prepare_cached("select id from ValidPaths where path = ?")
                .map_err(StoreError::Db)?;
            let mut add_ref = tx
                .prepare_cached("insert or replace into Refs (referrer, reference) values (?, ?)")
                .map_err(StoreError::Db)?;
            let mut add_output = tx
                .prepare_cached(
                    "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)",
                )
                .map_err(StoreError::Db)?;
            for Registration { info, drv_outputs } in batch {
                let sigs = (!info.signatures.is_empty()).then(|| info.signatures.join(" "));
                add.execute(params![
                    info.path.to_absolute(),
                    info.nar_hash.to_base16(),
                    now,
                    info.deriver.as_ref().map(StorePath::to_absolute),
                    info.nar_size as i64,
                    sigs,
                    info.ca,
                ])
                .map_err(StoreError::Db)?;
                let id: i64 = id_of
                    .query_row([info.path.to_absolute()], |row| row.get(0))
                    .map_err(StoreError::Db)?;
                for reference in &info.references {
                    let ref_id: Option<i64> = id_of
                        .query_row([reference.to_absolute()], |row| row.get(0))
                        .optional()
                        .map_err(StoreError::Db)?;
                    let ref_id = ref_id.ok_or_else(|| StoreError::MissingReference {
                        path: info.path.clone(),
                        reference: reference.clone(),
                    })?;
                    add_ref.execute([id, ref_id]).map_err(StoreError::Db)?;
                }
                for (output, path) in drv_outputs {
                    add_output
                        .execute(params![id, output, path.to_absolute()])
                        .map_err(StoreError::Db)?;
                }
            }
        }
        tx.commit().map_err(StoreError::Db)
    }
}

/// Refuses a database of another schema version than ours; a missing `schema` file is a new
/// database when `missing_ok`, an error otherwise.
fn check_schema(db_dir: &Path, missing_ok: bool) -> Result<(), StoreError> {
    let schema_file = db_dir.join("schema");
    match std::fs::read_to_string(&schema_file) {
        Ok(text) if text.trim() == SCHEMA_VERSION.to_string() => Ok(()),
        Ok(text) => Err(StoreError::SchemaVersion {
            dir: db_dir.to_owned(),
            found: text,
        }),
        Err(e) if missing_ok && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(&schema_file, e)),
    }
}

/// A path as an SQLite URI path: everything but unreserved characters and `/` percent-encoded.
fn percent_encode_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(b) {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
