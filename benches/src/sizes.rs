//! How large the database's hot tables are while a soak runs: sampled on
//! a connection of its own, printed as it goes, and summed up at the end.
//!
//! PostgreSQL reports each table's heap and indexes apart, its dead rows
//! and how often autovacuum has visited; SQLite reports each table with
//! its indexes (`dbstat`) and the pages it has freed for reuse.

use sqlx::{Connection, Row};
use std::time::Duration;
use tokio::sync::watch;

/// Bytes in a MiB, for the printed figures.
const MIB: f64 = 1024.0 * 1024.0;

/// One reading of the tables' sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the sampler started.
    pub t_s: u64,
    /// `runs`: its rows (heap and TOAST on PostgreSQL; with its indexes on
    /// SQLite), in bytes.
    pub runs_bytes: i64,
    /// `runs`' indexes, in bytes (PostgreSQL only).
    pub runs_index_bytes: Option<i64>,
    /// `deliveries`, as `runs_bytes`.
    pub deliveries_bytes: i64,
    /// `deliveries`' indexes, in bytes (PostgreSQL only).
    pub deliveries_index_bytes: Option<i64>,
    /// `heads`, with its indexes, in bytes (PostgreSQL only: SQLite keeps
    /// the heads in `runs`).
    pub heads_bytes: Option<i64>,
    /// Dead row versions in `runs` not yet vacuumed (PostgreSQL only).
    pub runs_dead: Option<i64>,
    /// Autovacuum passes over `runs` and `deliveries` so far (PostgreSQL).
    pub autovacuums: Option<i64>,
    /// Unfinished runs.
    pub open_runs: i64,
    /// Pages the file holds free for reuse (SQLite only).
    pub free_pages: Option<i64>,
}

fn mb(bytes: i64) -> f64 {
    bytes as f64 / MIB
}

impl Sample {
    /// The line printed for this sample.
    pub fn line(&self) -> String {
        let mut line = format!(
            "size: t_s={} open_runs={} runs_mb={:.1}",
            self.t_s,
            self.open_runs,
            mb(self.runs_bytes)
        );
        if let Some(i) = self.runs_index_bytes {
            line += &format!(" runs_idx_mb={:.1}", mb(i));
        }
        line += &format!(" deliveries_mb={:.1}", mb(self.deliveries_bytes));
        if let Some(i) = self.deliveries_index_bytes {
            line += &format!(" deliveries_idx_mb={:.1}", mb(i));
        }
        if let Some(h) = self.heads_bytes {
            line += &format!(" heads_mb={:.1}", mb(h));
        }
        if let Some(d) = self.runs_dead {
            line += &format!(" runs_dead={d}");
        }
        if let Some(a) = self.autovacuums {
            line += &format!(" autovacuums={a}");
        }
        if let Some(f) = self.free_pages {
            line += &format!(" free_pages={f}");
        }
        line
    }
}

/// The largest each figure got over a soak.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Largest {
    /// Bytes of `runs`.
    pub runs_bytes: i64,
    /// Bytes of `runs`' indexes, when reported apart.
    pub runs_index_bytes: Option<i64>,
    /// Bytes of `deliveries`.
    pub deliveries_bytes: i64,
    /// Bytes of `deliveries`' indexes, when reported apart.
    pub deliveries_index_bytes: Option<i64>,
    /// Bytes of `heads` with its indexes, where it is a table.
    pub heads_bytes: Option<i64>,
}

impl Largest {
    /// The RESULT line's fields.
    pub fn fields(&self) -> String {
        let mut f = format!(" runs_mb_max={:.1}", mb(self.runs_bytes));
        if let Some(i) = self.runs_index_bytes {
            f += &format!(" runs_idx_mb_max={:.1}", mb(i));
        }
        f += &format!(" deliveries_mb_max={:.1}", mb(self.deliveries_bytes));
        if let Some(i) = self.deliveries_index_bytes {
            f += &format!(" deliveries_idx_mb_max={:.1}", mb(i));
        }
        if let Some(h) = self.heads_bytes {
            f += &format!(" heads_mb_max={:.1}", mb(h));
        }
        f
    }
}

/// The largest of each figure over `samples`; none for no samples.
pub fn largest(samples: &[Sample]) -> Option<Largest> {
    let max = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    samples.iter().fold(None, |acc: Option<Largest>, s| {
        let l = acc.unwrap_or_default();
        Some(Largest {
            runs_bytes: l.runs_bytes.max(s.runs_bytes),
            runs_index_bytes: max(l.runs_index_bytes, s.runs_index_bytes),
            deliveries_bytes: l.deliveries_bytes.max(s.deliveries_bytes),
            deliveries_index_bytes: max(l.deliveries_index_bytes, s.deliveries_index_bytes),
            heads_bytes: max(l.heads_bytes, s.heads_bytes),
        })
    })
}

const POSTGRES_SIZES: &str = "\
SELECT pg_table_size('runs') AS runs_bytes,
       pg_indexes_size('runs') AS runs_index_bytes,
       pg_table_size('deliveries') AS deliveries_bytes,
       pg_indexes_size('deliveries') AS deliveries_index_bytes,
       pg_total_relation_size('heads') AS heads_bytes,
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'runs'::regclass) AS runs_dead,
       (SELECT sum(autovacuum_count)::bigint FROM pg_stat_user_tables
         WHERE relid IN ('runs'::regclass, 'deliveries'::regclass)) AS autovacuums,
       (SELECT count(*) FROM runs WHERE finished_at_ms IS NULL) AS open_runs";

const SQLITE_SIZES: &str = "\
SELECT (SELECT coalesce(sum(pgsize), 0) FROM dbstat
         WHERE name = 'runs' OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'runs' AND type = 'index')) AS runs_bytes,
       (SELECT coalesce(sum(pgsize), 0) FROM dbstat
         WHERE name = 'deliveries' OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = 'deliveries' AND type = 'index')) AS deliveries_bytes,
       (SELECT freelist_count FROM pragma_freelist_count) AS free_pages,
       (SELECT count(*) FROM runs WHERE finished_at_ms IS NULL) AS open_runs";

/// Reads the sizes once over `conn`.
async fn read(conn: &mut sqlx::AnyConnection, postgres: bool, t_s: u64) -> sqlx::Result<Sample> {
    if postgres {
        let row = sqlx::query(POSTGRES_SIZES).fetch_one(&mut *conn).await?;
        Ok(Sample {
            t_s,
            runs_bytes: row.try_get("runs_bytes")?,
            runs_index_bytes: Some(row.try_get("runs_index_bytes")?),
            deliveries_bytes: row.try_get("deliveries_bytes")?,
            deliveries_index_bytes: Some(row.try_get("deliveries_index_bytes")?),
            heads_bytes: Some(row.try_get("heads_bytes")?),
            runs_dead: row.try_get("runs_dead")?,
            autovacuums: row.try_get("autovacuums")?,
            open_runs: row.try_get("open_runs")?,
            free_pages: None,
        })
    } else {
        let row = sqlx::query(SQLITE_SIZES).fetch_one(&mut *conn).await?;
        Ok(Sample {
            t_s,
            runs_bytes: row.try_get("runs_bytes")?,
            runs_index_bytes: None,
            deliveries_bytes: row.try_get("deliveries_bytes")?,
            deliveries_index_bytes: None,
            heads_bytes: None,
            runs_dead: None,
            autovacuums: None,
            open_runs: row.try_get("open_runs")?,
            free_pages: Some(row.try_get("free_pages")?),
        })
    }
}

/// Samples the sizes of the database `url` names every `every` until
/// `stop`, then once more; prints each sample as it is read. `memory:`
/// has no tables to measure and gives no samples. A sample that fails is
/// reported and skipped: the soak goes on without it.
pub async fn sample_every(
    url: String,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let postgres = url.starts_with("postgres");
    if !postgres && !url.starts_with("sqlite") {
        return Vec::new();
    }
    sqlx::any::install_default_drivers();
    let mut conn = match sqlx::AnyConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: cannot sample the database's size: {e}");
            return Vec::new();
        }
    };
    let start = tokio::time::Instant::now();
    let mut samples = Vec::new();
    loop {
        let stopping = *stop.borrow();
        match read(&mut conn, postgres, start.elapsed().as_secs()).await {
            Ok(s) => {
                println!("{}", s.line());
                samples.push(s);
            }
            Err(e) => eprintln!("bench: a size sample failed: {e}"),
        }
        if stopping {
            return samples;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(runs: i64, idx: Option<i64>, deliveries: i64) -> Sample {
        Sample {
            runs_bytes: runs,
            runs_index_bytes: idx,
            deliveries_bytes: deliveries,
            ..Sample::default()
        }
    }

    #[test]
    fn the_largest_takes_each_figure_at_its_own_peak() {
        let l = largest(&[
            sample(10, Some(5), 1),
            Sample {
                heads_bytes: Some(3),
                ..sample(4, Some(9), 7)
            },
            sample(6, None, 2),
        ])
        .expect("samples");
        assert_eq!(l.heads_bytes, Some(3));
        assert_eq!(l.runs_bytes, 10);
        assert_eq!(l.runs_index_bytes, Some(9));
        assert_eq!(l.deliveries_bytes, 7);
        assert_eq!(l.deliveries_index_bytes, None);
        assert!(largest(&[]).is_none());
    }

    #[test]
    fn a_sample_prints_only_what_its_database_reports() {
        let pg = Sample {
            runs_index_bytes: Some(2 * 1024 * 1024),
            heads_bytes: Some(512 * 1024),
            runs_dead: Some(3),
            autovacuums: Some(1),
            ..sample(1024 * 1024, None, 0)
        };
        let line = pg.line();
        assert!(line.contains(" heads_mb=0.5 "), "{line}");
        assert!(line.contains("runs_mb=1.0 runs_idx_mb=2.0"), "{line}");
        assert!(line.contains("runs_dead=3 autovacuums=1"), "{line}");
        assert!(!line.contains("free_pages"), "{line}");
    }
}
