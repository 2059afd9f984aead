//! The `events` and `events_pipe` files as byte streams.
//!
//! A framework's event lines are numbered in the local copy, which keeps the last 10,000. The
//! files give them byte offsets: a line's offset is the bytes of every line before it since the
//! mount first saw the log, so offsets never move when old lines are dropped and the size only
//! grows. `events` is a log file: a read at its end gives end-of-file, so `cat`, `grep` and
//! `cp` end, and `tail -f` stats the size, reads back a few lines, then polls the size and
//! reads what was added. `events_pipe` holds the same lines, but a read at its end waits for
//! the next one (ftrace's `trace` and `trace_pipe`). Plain sequential readers start at the
//! oldest line kept, whatever the offset of their first read.
//!
//! The lengths of dropped lines are not in the copy, so the mount remembers the lengths of the
//! lines it has seen and counts those that leave the log. It updates this whenever a reader or
//! a `stat` looks; lines dropped unseen (over 10,000 while nobody looked) are not counted,
//! which only matters to a reader that did not look meanwhile either.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use mesofs_kernel::watch::{EventLog, View};

use crate::tree::active_framework;

/// What the mount knows of one framework's event log.
#[derive(Debug, Default)]
struct Offsets {
    /// Number of the first line whose length is remembered (the log's first once synced).
    first_line: u64,
    /// Byte offset of that line.
    first_byte: u64,
    /// Lengths of the lines from `first_line` on.
    lens: VecDeque<u64>,
    /// Their sum.
    kept_bytes: u64,
}

impl Offsets {
    /// Catches up with the log: counts the bytes of lines it dropped, learns new lines.
    fn sync(&mut self, log: &EventLog) {
        while self.first_line < log.first {
            match self.lens.pop_front() {
                Some(len) => {
                    self.first_byte += len;
                    self.kept_bytes -= len;
                    self.first_line += 1;
                }
                None => {
                    // Dropped before the mount saw them: their bytes are not counted.
                    self.first_line = log.first;
                }
            }
        }
        let known = (self.first_line + self.lens.len() as u64).saturating_sub(log.first);
        for line in log
            .lines
            .iter()
            .skip(usize::try_from(known).unwrap_or(usize::MAX))
        {
            let len = line.len() as u64;
            self.lens.push_back(len);
            self.kept_bytes += len;
        }
    }

    fn end(&self) -> u64 {
        self.first_byte + self.kept_bytes
    }

    /// Up to `size` bytes from byte `at` (not before the first kept line).
    fn bytes_from(&self, log: &EventLog, at: u64, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = self.first_byte;
        for (line, &len) in log.lines.iter().zip(&self.lens) {
            let end = start + len;
            if end > at {
                let skip = usize::try_from(at.saturating_sub(start)).unwrap_or(usize::MAX);
                let rest = &line.as_bytes()[skip.min(line.len())..];
                let take = rest.len().min(size - out.len());
                out.extend_from_slice(&rest[..take]);
                if out.len() == size {
                    break;
                }
            }
            start = end;
        }
        out
    }
}

/// Where one open of `events` is: the offset the kernel will ask next and the byte it means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The file offset a sequential next read comes at.
    pub next_offset: u64,
    /// The stream byte it continues from.
    pub next_byte: u64,
}

/// Byte offsets of every framework's event lines.
#[derive(Default)]
pub struct EventStreams {
    frameworks: Mutex<HashMap<String, Offsets>>,
}

impl EventStreams {
    fn with<R>(
        &self,
        view: &View,
        framework_id: &str,
        f: impl FnOnce(&Offsets, Option<&EventLog>) -> R,
    ) -> R {
        let mut all = self.frameworks.lock().expect("event offsets lock");
        let offsets = all.entry(framework_id.to_string()).or_default();
        let log = view.events.get(framework_id);
        if let Some(log) = log {
            offsets.sync(log);
        }
        f(offsets, log)
    }

    /// The size of the `events` file: the offset one past its last byte.
    pub fn size(&self, view: &View, framework_id: &str) -> u64 {
        self.with(view, framework_id, |o, _| o.end())
    }

    /// The cursor of a new open: its first read starts at the oldest line kept.
    pub fn open(&self, view: &View, framework_id: &str) -> Cursor {
        Cursor {
            next_offset: 0,
            next_byte: self.with(view, framework_id, |o, _| o.first_byte),
        }
    }

    /// A read of at most `size` bytes at file offset `offset`. A read where the previous one
    /// ended continues the stream; any other offset is a byte offset (the reader seeked).
    /// Empty: end of file (for a `blocking` read, only once the framework is torn down).
    /// `None`: a `blocking` read at the end, with nothing to read yet.
    pub fn read(
        &self,
        view: &View,
        framework_id: &str,
        cursor: &mut Cursor,
        offset: u64,
        size: usize,
        blocking: bool,
    ) -> Option<Vec<u8>> {
        let at = if offset == cursor.next_offset {
            cursor.next_byte
        } else {
            offset
        };
        let data = self.with(view, framework_id, |o, log| {
            // A reader that lagged behind dropped lines goes on from the oldest kept.
            let at = at.max(o.first_byte);
            let data = match log {
                Some(log) if at < o.end() && size > 0 => o.bytes_from(log, at, size),
                _ => Vec::new(),
            };
            (at, data)
        });
        let (at, data) = data;
        if blocking && data.is_empty() && size > 0 && active_framework(view, framework_id).is_some()
        {
            return None;
        }
        *cursor = Cursor {
            next_offset: offset + data.len() as u64,
            next_byte: at + data.len() as u64,
        };
        Some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::standard;
    use mesofs_kernel::state::TaskState;
    use mesofs_kernel::watch::EVENT_LINES_KEPT;

    /// The next sequential read of an open.
    fn next(
        streams: &EventStreams,
        view: &View,
        fw: &str,
        cursor: &mut Cursor,
        size: usize,
    ) -> Option<Vec<u8>> {
        let at = cursor.next_offset;
        streams.read(view, fw, cursor, at, size, true)
    }

    fn read_all(
        streams: &EventStreams,
        view: &View,
        fw: &str,
        cursor: &mut Cursor,
        chunk: usize,
    ) -> String {
        let mut out = Vec::new();
        while let Some(data) = next(streams, view, fw, cursor, chunk) {
            if data.is_empty() {
                break;
            }
            out.extend(data);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_are_read_in_order_whole_or_in_pieces_and_end_after_teardown() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        c.refused(&hello, "bad spec");
        c.remove_offer("1-1", &hello, "agent gone", true);
        let streams = EventStreams::default();
        let view = c.copy.view();
        let mut cursor = streams.open(&view, &hello);
        let all = read_all(&streams, &view, &hello, &mut cursor, 1 << 20);
        assert_eq!(
            all.lines().collect::<Vec<_>>(),
            [
                "task web TASK_STAGING",
                "task batch TASK_STAGING",
                "task web TASK_RUNNING",
                "task batch TASK_RUNNING",
                "task batch TASK_FINISHED REASON_COMMAND_EXITED exited with status 0",
                "offer 1-1 agent=a1 hostname=a1.example resources=cpus:2.5;disk:1024;mem:3968;ports:[31002-31099]",
                "error bad spec",
                "rescind 1-1 agent gone",
            ]
        );
        assert_eq!(streams.size(&view, &hello), all.len() as u64);
        assert!(
            next(&streams, &view, &hello, &mut cursor, 100).is_none(),
            "the pipe blocks at the end"
        );
        let at = cursor.next_offset;
        assert_eq!(
            streams.read(&view, &hello, &mut cursor, at, 100, false),
            Some(Vec::new()),
            "the log gives end-of-file at the end"
        );

        let mut small = streams.open(&view, &hello);
        assert_eq!(read_all(&streams, &view, &hello, &mut small, 7), all);
        // A seek is a byte offset: the last line, as tail reads it.
        let last = "rescind 1-1 agent gone\n";
        let mut seeked = streams.open(&view, &hello);
        let at = (all.len() - last.len()) as u64;
        assert_eq!(
            streams
                .read(&view, &hello, &mut seeked, at, 100, true)
                .unwrap(),
            last.as_bytes()
        );
        drop(view);

        c.update(&hello, "web", TaskState::Killed, "", "");
        c.teardown(&hello);
        let view = c.copy.view();
        let rest = next(&streams, &view, &hello, &mut cursor, 100).unwrap();
        assert_eq!(rest, b"task web TASK_KILLED\n");
        let end = next(&streams, &view, &hello, &mut cursor, 100).unwrap();
        assert!(end.is_empty(), "end of stream once torn down");
    }

    #[test]
    fn offsets_stay_put_when_old_lines_are_dropped_and_laggards_skip_ahead() {
        let (mut c, hello, _) = standard("127.0.0.1:1");
        let streams = EventStreams::default();
        let (mut lagging, size_before) = {
            let view = c.copy.view();
            (streams.open(&view, &hello), streams.size(&view, &hello))
        };
        let mut added = 0u64;
        for i in 0..EVENT_LINES_KEPT + 5 {
            let message = format!("refusal {i}");
            added += format!("error {message}\n").len() as u64;
            c.refused(&hello, &message);
            if i % 1000 == 0 {
                // A reader or stat looks now and then, as tail -f does.
                streams.size(&c.copy.view(), &hello);
            }
        }
        let view = c.copy.view();
        assert_eq!(
            streams.size(&view, &hello),
            size_before + added,
            "the size only grows"
        );
        let first = streams
            .read(&view, &hello, &mut lagging, 0, 1 << 20, true)
            .unwrap();
        let first = String::from_utf8(first).unwrap();
        assert!(
            first.starts_with("error refusal 5\n"),
            "the laggard skips to the oldest kept line"
        );
    }
}
