//! Container logs as Podman's `k8s-file` driver writes them: the CRI log format the
//! kubelet itself reads (`<time> <stream> <P|F> <text>`, `P` for a partial line
//! continued on the next record).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The most of a log file read: its last MiB, as the kubelet bounds what it serves.
const MAX_LOG: u64 = 1 << 20;
/// How many of a run's last log lines its exit carries: as many as a termination
/// message falls back to (`FallbackToLogsOnError`).
pub(crate) const TAIL_LINES: usize = 80;

/// The lines of the log at `path` (the last MiB of it), stdout and stderr
/// interleaved as written; empty when there is no log yet.
pub(crate) fn read(path: &Path) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(MAX_LOG);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(MAX_LOG).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut records = text.lines();
    if start > 0 {
        // The first record was cut.
        records.next();
    }
    parse(records)
}

/// The text of `k8s-file` records, partial ones joined.
fn parse<'a>(records: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    for record in records {
        let mut fields = record.splitn(4, ' ');
        let (Some(_time), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        partial.push_str(fields.next().unwrap_or(""));
        if tag != "P" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn joins_partial_records_and_keeps_streams_interleaved() {
        let records = [
            "2026-12-03T07:27:46.50+00:00 stdout F out bar",
            "2026-12-03T07:27:46.51+00:00 stderr P par",
            "2026-12-03T07:27:46.52+00:00 stderr F tial",
            "2026-12-03T07:27:46.53+00:00 stdout F ",
            "garbage",
        ];
        assert_eq!(parse(records.into_iter()), ["out bar", "partial", ""]);
    }
}
