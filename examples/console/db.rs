//! The run history: one SQLite file in WAL mode, migrated by `user_version`.
//! It is also the queue: a run is `queued` until a worker claims it, so a restart
//! finds what was waiting, and what was `running` becomes `interrupted`.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    reference TEXT NOT NULL,
    sha TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    base TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    report TEXT
);
CREATE INDEX runs_by_environment ON runs (environment, status, id);
CREATE TABLE events (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE log_lines (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,
    at INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY,
    environment TEXT NOT NULL,
    app TEXT NOT NULL,
    image TEXT NOT NULL,
    sha TEXT,
    run_id INTEGER REFERENCES runs (id),
    action TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX deployments_by_app ON deployments (app, environment, id);
"#,
    r#"
CREATE TABLE deliveries (
    provider TEXT NOT NULL,
    id TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (provider, id)
);
"#,
];

/// A run as stored.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) id: i64,
    pub(crate) environment: String,
    pub(crate) reference: String,
    pub(crate) sha: String,
    pub(crate) trigger: String,
    pub(crate) status: String,
    pub(crate) reason: Option<String>,
    pub(crate) base: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
}

/// A log line of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LogLine {
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) line: String,
}

/// What runs in an environment, or ran there before.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Deployment {
    pub(crate) environment: String,
    pub(crate) app: String,
    pub(crate) image: String,
    pub(crate) sha: Option<String>,
    pub(crate) run_id: Option<i64>,
    pub(crate) action: String,
    pub(crate) at: i64,
}

/// The statuses a run ends in; `queued` and `running` are the others.
pub(crate) const FINISHED: [&str; 9] = [
    "succeeded",
    "nothing_to_do",
    "failed",
    "rolled_back",
    "cancelled",
    "error",
    "interrupted",
    "superseded",
    "skipped",
];

/// The database, shared by the server and the workers.
#[derive(Clone)]
pub(crate) struct Db(Arc<Mutex<Connection>>);

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

const RUN_COLUMNS: &str = "id, environment, reference, sha, trigger, status, reason, base, created_at, started_at, finished_at";

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: row.get(0)?,
        environment: row.get(1)?,
        reference: row.get(2)?,
        sha: row.get(3)?,
        trigger: row.get(4)?,
        status: row.get(5)?,
        reason: row.get(6)?,
        base: row.get(7)?,
        created_at: row.get(8)?,
        started_at: row.get(9)?,
        finished_at: row.get(10)?,
    })
}

impl Db {
    /// Opens (or creates) the file, migrates it, and marks runs left `running`
    /// by a killed process as `interrupted`.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        anyhow::ensure!(
            version <= MIGRATIONS.len(),
            "{} has schema version {version}, newer than this program's {}",
            path.display(),
            MIGRATIONS.len()
        );
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(migration)
                .with_context(|| format!("migration {} of {}", i + 1, path.display()))?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()?;
        }
        let db = Self(Arc::new(Mutex::new(conn)));
        let interrupted = db.interrupt_running()?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "runs left running by the last process marked interrupted"
            );
        }
        Ok(db)
    }

    /// Marks every `running` run `interrupted`; returns how many.
    pub(crate) fn interrupt_running(&self) -> anyhow::Result<usize> {
        Ok(self.conn().execute(
            "UPDATE runs SET status = 'interrupted', reason = 'the service stopped during the run', finished_at = ?1 WHERE status = 'running'",
            params![now()],
        )?)
    }

    /// Marks the `running` run of `environment` as `error` with `reason`.
    pub(crate) fn fail_running(&self, environment: &str, reason: &str) -> anyhow::Result<usize> {
        Ok(self.conn().execute(
            "UPDATE runs SET status = 'error', reason = ?1, finished_at = ?2 WHERE environment = ?3 AND status = 'running'",
            params![reason, now(), environment],
        )?)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a run; a run still queued for the same environment is superseded by it.
    /// Returns the new run's id and the ids it superseded.
    pub(crate) fn enqueue(
        &self,
        environment: &str,
        reference: &str,
        sha: &str,
        trigger: &str,
    ) -> anyhow::Result<(i64, Vec<i64>)> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let superseded: Vec<i64> = tx
            .prepare("SELECT id FROM runs WHERE environment = ?1 AND status = 'queued'")?
            .query_map(params![environment], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tx.execute(
            "INSERT INTO runs (environment, reference, sha, trigger, status, created_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
            params![environment, reference, sha, trigger, now()],
        )?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "UPDATE runs SET status = 'superseded', reason = ?1, finished_at = ?2 WHERE environment = ?3 AND status = 'queued' AND id <> ?4",
            params![format!("superseded by run {id}"), now(), environment, id],
        )?;
        tx.commit()?;
        Ok((id, superseded))
    }

    /// The queued run of `environment`, if any.
    pub(crate) fn queued(&self, environment: &str) -> anyhow::Result<Option<Run>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE environment = ?1 AND status = 'queued' ORDER BY id DESC LIMIT 1"),
                params![environment],
                run_row,
            )
            .optional()?)
    }

    /// Records a webhook delivery's id; false when it was recorded before (a
    /// redelivery or a replay).
    pub(crate) fn first_delivery(&self, provider: &str, id: &str) -> anyhow::Result<bool> {
        let added = self.conn().execute(
            "INSERT OR IGNORE INTO deliveries (provider, id, at) VALUES (?1, ?2, ?3)",
            params![provider, id, now()],
        )?;
        Ok(added == 1)
    }

    /// Forgets a delivery id whose trigger failed, so a redelivery is taken.
    pub(crate) fn forget_delivery(&self, provider: &str, id: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "DELETE FROM deliveries WHERE provider = ?1 AND id = ?2",
            params![provider, id],
        )?;
        Ok(())
    }

    /// Records a trigger that does not run, so the page shows why: no
    /// environment takes it (`environment` empty), or it is older than what is queued.
    pub(crate) fn skipped(
        &self,
        environment: &str,
        reference: &str,
        sha: &str,
        trigger: &str,
        reason: &str,
    ) -> anyhow::Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (environment, reference, sha, trigger, status, reason, created_at, finished_at) VALUES (?1, ?2, ?3, ?4, 'skipped', ?5, ?6, ?6)",
            params![environment, reference, sha, trigger, reason, now()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The environments with a queued run.
    pub(crate) fn queued_environments(&self) -> anyhow::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT DISTINCT environment FROM runs WHERE status = 'queued' ORDER BY 1")?;
        let envs = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(envs)
    }

    /// Takes the oldest queued run of `environment` and marks it running.
    pub(crate) fn claim(&self, environment: &str) -> anyhow::Result<Option<Run>> {
        let conn = self.conn();
        let run = conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE environment = ?1 AND status = 'queued' ORDER BY id LIMIT 1"),
                params![environment],
                run_row,
            )
            .optional()?;
        let Some(mut run) = run else { return Ok(None) };
        let started = now();
        conn.execute(
            "UPDATE runs SET status = 'running', started_at = ?1 WHERE id = ?2",
            params![started, run.id],
        )?;
        run.status = "running".into();
        run.started_at = Some(started);
        Ok(Some(run))
    }

    /// Records the base a run compares against.
    pub(crate) fn set_base(&self, run: i64, base: Option<&str>) -> anyhow::Result<()> {
        self.conn().execute(
            "UPDATE runs SET base = ?1 WHERE id = ?2",
            params![base, run],
        )?;
        Ok(())
    }

    /// Ends a run with its status, reason, report and the apps it deployed, at once.
    pub(crate) fn finish(
        &self,
        run: &Run,
        status: &str,
        reason: Option<&str>,
        report: Option<&str>,
        deployed: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = now();
        tx.execute(
            "UPDATE runs SET status = ?1, reason = ?2, report = ?3, finished_at = ?4 WHERE id = ?5",
            params![status, reason, report, at, run.id],
        )?;
        for (app, image) in deployed {
            tx.execute(
                "INSERT INTO deployments (environment, app, image, sha, run_id, action, at) VALUES (?1, ?2, ?3, ?4, ?5, 'deploy', ?6)",
                params![run.environment, app, image, run.sha, run.id, at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a rollback done from the console.
    pub(crate) fn rolled_back(
        &self,
        environment: &str,
        app: &str,
        image: &str,
    ) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO deployments (environment, app, image, action, at) VALUES (?1, ?2, ?3, 'rollback', ?4)",
            params![environment, app, image, now()],
        )?;
        Ok(())
    }

    /// Appends a log line; returns its sequence number.
    pub(crate) fn log(&self, run: i64, line: &str) -> anyhow::Result<i64> {
        let conn = self.conn();
        let seq: i64 = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM log_lines WHERE run_id = ?1",
            params![run],
            |r| r.get(0),
        )?;
        conn.execute(
            "INSERT INTO log_lines (run_id, seq, at, line) VALUES (?1, ?2, ?3, ?4)",
            params![run, seq, now(), line],
        )?;
        Ok(seq)
    }

    /// Appends a pipeline event (as JSON).
    pub(crate) fn event(&self, run: i64, event: &str) -> anyhow::Result<()> {
        self.conn().execute(
            "INSERT INTO events (run_id, seq, event) SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2 FROM events WHERE run_id = ?1",
            params![run, event],
        )?;
        Ok(())
    }

    /// The sha of the last run of `environment` that ended well.
    pub(crate) fn last_good_sha(&self, environment: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT sha FROM runs WHERE environment = ?1 AND status IN ('succeeded', 'nothing_to_do') ORDER BY id DESC LIMIT 1",
                params![environment],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// One run.
    pub(crate) fn run(&self, id: i64) -> anyhow::Result<Option<Run>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                params![id],
                run_row,
            )
            .optional()?)
    }

    /// A run's report, as stored JSON.
    pub(crate) fn report(&self, id: i64) -> anyhow::Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT report FROM runs WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?
            .flatten())
    }

    /// The newest runs first.
    pub(crate) fn runs(&self, limit: i64) -> anyhow::Result<Vec<Run>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
        ))?;
        let runs = stmt
            .query_map(params![limit], run_row)?
            .collect::<Result<_, _>>()?;
        Ok(runs)
    }

    /// A run's log lines after `after`.
    pub(crate) fn log_lines(&self, run: i64, after: i64) -> anyhow::Result<Vec<LogLine>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, line FROM log_lines WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
        )?;
        let lines = stmt
            .query_map(params![run, after], |r| {
                Ok(LogLine {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    line: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(lines)
    }

    /// A run's events, as stored JSON.
    pub(crate) fn events(&self, run: i64) -> anyhow::Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT event FROM events WHERE run_id = ?1 ORDER BY seq")?;
        let events = stmt
            .query_map(params![run], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(events)
    }

    /// What runs now in each environment, per app: the latest deployment.
    pub(crate) fn current(&self) -> anyhow::Result<Vec<Deployment>> {
        self.deployments(
            "WHERE id IN (SELECT MAX(id) FROM deployments GROUP BY app, environment) ORDER BY app, environment",
            params![],
        )
    }

    /// An app's deployments, newest first.
    pub(crate) fn app_history(&self, app: &str) -> anyhow::Result<Vec<Deployment>> {
        self.deployments("WHERE app = ?1 ORDER BY id DESC LIMIT 200", params![app])
    }

    fn deployments(
        &self,
        clause: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> anyhow::Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT environment, app, image, sha, run_id, action, at FROM deployments {clause}"
        ))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok(Deployment {
                    environment: r.get(0)?,
                    app: r.get(1)?,
                    image: r.get(2)?,
                    sha: r.get(3)?,
                    run_id: r.get(4)?,
                    action: r.get(5)?,
                    at: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_run_supersedes_the_queued_one_and_a_restart_interrupts_the_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.db");
        let db = Db::open(&path).expect("open");
        let (first, _) = db
            .enqueue("staging", "refs/heads/main", "a", "test")
            .expect("q");
        let claimed = db.claim("staging").expect("claim").expect("a run");
        assert_eq!(claimed.id, first);
        let (second, none) = db
            .enqueue("staging", "refs/heads/main", "b", "test")
            .expect("q");
        assert!(none.is_empty(), "a running run is not superseded");
        let (third, superseded) = db
            .enqueue("staging", "refs/heads/main", "c", "test")
            .expect("q");
        assert_eq!(superseded, vec![second]);
        drop(db);
        let db = Db::open(&path).expect("reopen");
        assert_eq!(
            db.run(first).expect("get").expect("run").status,
            "interrupted"
        );
        assert_eq!(
            db.run(second).expect("get").expect("run").status,
            "superseded"
        );
        assert_eq!(db.claim("staging").expect("claim").expect("run").id, third);
    }

    #[test]
    fn a_delivery_id_is_taken_once_per_provider_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.db");
        let db = Db::open(&path).expect("open");
        assert!(db.first_delivery("github", "d-1").expect("record"));
        assert!(!db.first_delivery("github", "d-1").expect("record"));
        assert!(db.first_delivery("gitea", "d-1").expect("record"));
        drop(db);
        let db = Db::open(&path).expect("reopen");
        assert!(!db.first_delivery("github", "d-1").expect("record"));
        db.forget_delivery("github", "d-1").expect("forget");
        assert!(db.first_delivery("github", "d-1").expect("record"));
    }
}
