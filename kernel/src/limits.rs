//! Every bound on what a peer may send, in one place (docs/security.md lists them): a client
//! that sends more gets an error, and nothing it sent stays in the master beyond these.

/// The largest request a master decodes from an agent or a mount (a write's text is at most
/// [`MAX_WRITE_TEXT`]; an agent's registration lists the tasks it runs).
pub const MAX_REQUEST_TO_MASTER: usize = 8 << 20;

/// The largest message a client decodes from a master: the state stream's first event is the
/// whole cluster state, which grows with it. Masters are authenticated, so this only guards
/// against a corrupt stream.
pub const MAX_FROM_MASTER: usize = 1 << 30;

/// The largest Raft message a master decodes from another master: entries are sent many to a
/// message, and a master must never be unable to catch up a follower.
pub const MAX_RAFT_MESSAGE: usize = 1 << 30;

/// The largest request an agent's file service decodes (a task id, a file name, a range).
pub const MAX_FILES_REQUEST: usize = 64 << 10;

/// The most requests one connection may have in flight at a master or an agent (streams
/// included); more wait.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;

/// The longest write text (a launch's specs, a decline's duration, a membership change) a
/// master takes: a mount's command limit is just under it.
pub const MAX_WRITE_TEXT: usize = 1 << 20;

/// The longest client id a write may carry.
pub const MAX_CLIENT_ID: usize = 128;

/// The longest offer id a write may name.
pub const MAX_OFFER_ID: usize = 128;

/// The most bytes of commands one Raft entry carries (a batch stops before it passes this).
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// The longest status-update message an agent's update keeps (longer ones are cut).
pub const MAX_STATUS_MESSAGE: usize = 4 << 10;

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("hello", 10), "hello");
        assert_eq!(cut("hello", 3), "hel");
        assert_eq!(cut("héllo", 2), "h", "é is two bytes");
        assert_eq!(cut("", 0), "");
    }
}
