//! The durable job queue: one SQLite table in WAL mode, shared by every worker of every
//! process serving the same data folder.
//!
//! ```text
//! insert ──► queued ──claim (lease)──► in_progress ──complete──► completed
//!              ▲                        │  │ heartbeat extends the lease
//!              └── lease expired ───────┘  └──fail──► failed
//! ```
//!
//! A worker owns a running job only while its lease holds; a process killed mid-job stops
//! renewing it and [`Store::reap_expired`] puts the job back in the queue (or fails it after
//! [`MAX_ATTEMPTS`] tries, so one poisonous request cannot crash servers forever). Deleting a
//! row is how a job is cancelled: the worker's next heartbeat finds it gone.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

/// A job that crashed its worker this many times is failed instead of run again.
pub const MAX_ATTEMPTS: i64 = 3;

/// Job states, as the API names them.
pub const QUEUED: &str = "queued";
pub const IN_PROGRESS: &str = "in_progress";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";

/// What to generate, fixed at submission (the seed included, so a requeued job makes the
/// same video).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParams {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub num_frames: usize,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub guidance: f64,
    pub seed: u64,
    pub fps: u32,
    /// Image-to-video: the first frame is `inputs/<id>.png` in the data folder.
    #[serde(default)]
    pub image: bool,
    /// The fast mode's first-block cache threshold, if asked for.
    #[serde(default)]
    pub step_cache: Option<f64>,
}

/// One row of the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub created_at: i64,
    pub status: String,
    pub progress: i64,
    pub model: String,
    pub seconds: String,
    pub size: String,
    pub params: JobParams,
    pub remixed_from: Option<String>,
    pub completed_at: Option<i64>,
    pub error: Option<(String, String)>,
    pub attempts: i64,
}

/// The job store over `<data-dir>/jobs.sqlite3`.
pub struct Store {
    conn: Mutex<Connection>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const COLUMNS: &str = "id, created_at, status, progress, model, seconds, size, params, \
                       remixed_from, completed_at, error_code, error_message, attempts";

fn job_of(row: &Row) -> rusqlite::Result<Job> {
    let params: String = row.get(7)?;
    let params = serde_json::from_str(&params).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let code: Option<String> = row.get(10)?;
    let message: Option<String> = row.get(11)?;
    Ok(Job {
        id: row.get(0)?,
        created_at: row.get(1)?,
        status: row.get(2)?,
        progress: row.get(3)?,
        model: row.get(4)?,
        seconds: row.get(5)?,
        size: row.get(6)?,
        params,
        remixed_from: row.get(8)?,
        completed_at: row.get(9)?,
        error: code.map(|c| (c, message.unwrap_or_default())),
        attempts: row.get(12)?,
    })
}

/// Why a job could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertError {
    /// `--max-queue` jobs are already waiting.
    QueueFull { queued: usize },
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("jobs.sqlite3");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a job acknowledged to the client survives a power cut, not only a crash
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                status TEXT NOT NULL,
                progress INTEGER NOT NULL DEFAULT 0,
                model TEXT NOT NULL,
                seconds TEXT NOT NULL,
                size TEXT NOT NULL,
                params TEXT NOT NULL,
                remixed_from TEXT,
                completed_at INTEGER,
                error_code TEXT,
                error_message TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires_ms INTEGER
            );
            CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);",
        )
        .with_context(|| format!("creating the job table in {}", path.display()))?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `job` unless `max_queue` jobs already wait.
    pub fn insert(
        &self,
        job: &Job,
        max_queue: usize,
    ) -> Result<std::result::Result<(), InsertError>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let queued: i64 = tx.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status = ?1",
            [QUEUED],
            |r| r.get(0),
        )?;
        if queued as usize >= max_queue {
            return Ok(Err(InsertError::QueueFull {
                queued: queued as usize,
            }));
        }
        tx.execute(
            "INSERT INTO jobs (id, created_at, status, progress, model, seconds, size, params,
                               remixed_from)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8)",
            params![
                job.id,
                job.created_at,
                QUEUED,
                job.model,
                job.seconds,
                job.size,
                serde_json::to_string(&job.params)?,
                job.remixed_from,
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_of,
            )
            .optional()?)
    }

    /// A page of jobs in submission order (`ascending`) or newest first, after the job
    /// `after` if given; `has_more` tells whether more follow.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<(Vec<Job>, bool)> {
        let conn = self.conn();
        let cursor: Option<i64> = match after {
            Some(id) => Some(
                conn.query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| anyhow::anyhow!("after: no video `{id}`"))?,
            ),
            None => None,
        };
        let (cmp, order) = if ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR seq {cmp} ?1) ORDER BY seq {order} \
             LIMIT ?2"
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut jobs = stmt
            .query_map(params![cursor, limit as i64 + 1], job_of)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let has_more = jobs.len() > limit;
        jobs.truncate(limit);
        Ok((jobs, has_more))
    }

    /// Removes the job, returning it; a worker running it sees it gone at its next heartbeat.
    pub fn delete(&self, id: &str) -> Result<Option<Job>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let job = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_of,
            )
            .optional()?;
        if job.is_some() {
            tx.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(job)
    }

    /// Takes the oldest queued job for `owner` with a lease of `lease_ms`.
    pub fn claim(&self, owner: &str, lease_ms: i64) -> Result<Option<Job>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "UPDATE jobs SET status = ?1, progress = 0, lease_owner = ?2,
                            lease_expires_ms = ?3, attempts = attempts + 1
                     WHERE seq = (SELECT seq FROM jobs WHERE status = ?4 ORDER BY seq LIMIT 1)
                     RETURNING {COLUMNS}"
                ),
                params![IN_PROGRESS, owner, now_ms() + lease_ms, QUEUED],
                job_of,
            )
            .optional()?)
    }

    /// Extends `owner`'s lease on `id` (and records `progress`, if given). False when the job
    /// is no longer `owner`'s: deleted (cancelled) or its lease lost.
    pub fn heartbeat(
        &self,
        id: &str,
        owner: &str,
        progress: Option<i64>,
        lease_ms: i64,
    ) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE jobs SET lease_expires_ms = ?1, progress = COALESCE(?2, progress)
             WHERE id = ?3 AND lease_owner = ?4 AND status = ?5",
            params![now_ms() + lease_ms, progress, id, owner, IN_PROGRESS],
        )?;
        Ok(n == 1)
    }

    /// Marks `owner`'s job finished. False when it was no longer `owner`'s.
    pub fn complete(&self, id: &str, owner: &str) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE jobs SET status = ?1, progress = 100, completed_at = ?2, lease_owner = NULL,
                    lease_expires_ms = NULL
             WHERE id = ?3 AND lease_owner = ?4 AND status = ?5",
            params![COMPLETED, now_ms() / 1000, id, owner, IN_PROGRESS],
        )?;
        Ok(n == 1)
    }

    /// Marks `owner`'s job failed with an error the client may read.
    pub fn fail(&self, id: &str, owner: &str, code: &str, message: &str) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE jobs SET status = ?1, completed_at = ?2, error_code = ?3, error_message = ?4,
                    lease_owner = NULL, lease_expires_ms = NULL
             WHERE id = ?5 AND lease_owner = ?6 AND status = ?7",
            params![
                FAILED,
                now_ms() / 1000,
                code,
                message,
                id,
                owner,
                IN_PROGRESS
            ],
        )?;
        Ok(n == 1)
    }

    /// Puts `owner`'s running job back at its place in the queue (a shutdown), without
    /// counting the attempt.
    pub fn requeue(&self, id: &str, owner: &str) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE jobs SET status = ?1, progress = 0, lease_owner = NULL,
                    lease_expires_ms = NULL, attempts = MAX(attempts - 1, 0)
             WHERE id = ?2 AND lease_owner = ?3 AND status = ?4",
            params![QUEUED, id, owner, IN_PROGRESS],
        )?;
        Ok(n == 1)
    }

    /// Requeues running jobs whose lease has run out (their worker died), failing those that
    /// already had [`MAX_ATTEMPTS`]. Returns how many were requeued.
    pub fn reap_expired(&self) -> Result<usize> {
        let conn = self.conn();
        let now = now_ms();
        conn.execute(
            "UPDATE jobs SET status = ?1, completed_at = ?2, error_code = 'worker_crashed',
                    error_message = 'the server stopped while generating this video, '
                        || attempts || ' times; it is not retried again',
                    lease_owner = NULL, lease_expires_ms = NULL
             WHERE status = ?3 AND lease_expires_ms < ?4 AND attempts >= ?5",
            params![FAILED, now / 1000, IN_PROGRESS, now, MAX_ATTEMPTS],
        )?;
        let n = conn.execute(
            "UPDATE jobs SET status = ?1, progress = 0, lease_owner = NULL,
                    lease_expires_ms = NULL
             WHERE status = ?2 AND lease_expires_ms < ?3",
            params![QUEUED, IN_PROGRESS, now],
        )?;
        Ok(n)
    }

    /// Jobs per status.
    pub fn counts(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Ids of every job (to tell which files on disk are orphans).
    pub fn ids(&self) -> Result<std::collections::HashSet<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM jobs")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            created_at: 1,
            status: QUEUED.into(),
            progress: 0,
            model: "m".into(),
            seconds: "2".into(),
            size: "64x64".into(),
            params: JobParams {
                prompt: "a red ball".into(),
                negative_prompt: None,
                num_frames: 17,
                width: 64,
                height: 64,
                steps: 4,
                guidance: 1.0,
                seed: 7,
                fps: 8,
                image: false,
                step_cache: None,
            },
            remixed_from: None,
            completed_at: None,
            error: None,
            attempts: 0,
        }
    }

    #[test]
    fn queue_lifecycle_and_leases() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert(&job("a"), 2).unwrap().unwrap();
        store.insert(&job("b"), 2).unwrap().unwrap();
        assert_eq!(
            store.insert(&job("c"), 2).unwrap(),
            Err(InsertError::QueueFull { queued: 2 })
        );
        // oldest first; the claim is the worker's
        let a = store.claim("w1", 60_000).unwrap().unwrap();
        assert_eq!((a.id.as_str(), a.status.as_str()), ("a", IN_PROGRESS));
        assert!(store.heartbeat("a", "w1", Some(40), 60_000).unwrap());
        assert!(!store.heartbeat("a", "w2", None, 60_000).unwrap());
        assert_eq!(store.get("a").unwrap().unwrap().progress, 40);
        assert!(store.complete("a", "w1").unwrap());
        assert_eq!(store.get("a").unwrap().unwrap().status, COMPLETED);
        // an expired lease goes back to the queue, and is failed after MAX_ATTEMPTS
        for attempt in 1..=MAX_ATTEMPTS {
            let b = store.claim("w1", -1).unwrap().unwrap();
            assert_eq!((b.id.as_str(), b.attempts), ("b", attempt));
            let requeued = store.reap_expired().unwrap();
            assert_eq!(requeued, usize::from(attempt < MAX_ATTEMPTS));
        }
        let b = store.get("b").unwrap().unwrap();
        assert_eq!(b.status, FAILED);
        assert_eq!(b.error.unwrap().0, "worker_crashed");
        // deleting a running job is seen by its worker
        store.insert(&job("d"), 2).unwrap().unwrap();
        store.claim("w1", 60_000).unwrap().unwrap();
        assert!(store.delete("d").unwrap().is_some());
        assert!(!store.heartbeat("d", "w1", None, 60_000).unwrap());
        assert!(!store.complete("d", "w1").unwrap());
    }

    #[test]
    fn pages_in_both_orders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["a", "b", "c", "d", "e"] {
            store.insert(&job(id), 10).unwrap().unwrap();
        }
        let ids = |jobs: Vec<Job>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        let (page, more) = store.list(None, 2, true).unwrap();
        assert_eq!((ids(page), more), (vec!["a".to_string(), "b".into()], true));
        let (page, more) = store.list(Some("b"), 3, true).unwrap();
        assert_eq!(
            (ids(page), more),
            (vec!["c".into(), "d".into(), "e".into()], false)
        );
        let (page, more) = store.list(Some("c"), 5, false).unwrap();
        assert_eq!((ids(page), more), (vec!["b".into(), "a".into()], false));
        assert!(store.list(Some("zz"), 5, false).is_err());
    }

    #[test]
    fn jobs_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert(&job("a"), 2).unwrap().unwrap();
            store.claim("dead", 60_000).unwrap().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let a = store.get("a").unwrap().unwrap();
        assert_eq!(a.status, IN_PROGRESS);
        assert_eq!(a.params, job("a").params);
    }
}
