//! Sliding anti-replay window for transport counters (sans-IO, data-plane layer).
//!
//! Every transport packet carries an explicit 64-bit counter (its AEAD nonce). UDP may reorder
//! and duplicate packets, so the receiver cannot insist on strictly increasing counters; instead
//! it remembers which of the last [`REPLAY_WINDOW`] counters it has already accepted and refuses
//! the rest. This is the scheme of RFC 6479 as used by WireGuard:
//!
//! * `top` is the highest counter accepted so far. The window covers the counters
//!   `top - (REPLAY_WINDOW - 1) ..= top`, i.e. exactly `REPLAY_WINDOW` counters.
//! * The bitmap is a ring of `REPLAY_WINDOW` bits: counter `c` lives at bit `c % REPLAY_WINDOW`.
//!   Because the window is exactly as wide as the ring, every counter in the window has its own
//!   bit and no two share one.
//! * A counter above `top` is always new. Accepting it slides the window forward: the bits of the
//!   counters skipped over (`top + 1 ..= c`) belonged to counters that just fell out of the
//!   window, so they are cleared; a jump of a whole window or more clears the entire ring.
//! * A counter inside the window is accepted once: if its bit is clear it is set, else it is a
//!   duplicate.
//! * A counter `REPLAY_WINDOW` or more below `top` is too old to judge and is refused.
//!
//! The window must only be updated after the packet has been authenticated (otherwise a forger
//! could slide it forward and make genuine packets look old); [`ReplayWindow::would_accept`] is a
//! cheap pre-check that may run before decryption.

/// Width of the window in counters: WireGuard's `COUNTER_WINDOW_SIZE` (8192 bits, RFC 6479
/// suggests a multiple of the word size; 8192 tolerates heavy reordering at 10 Gbit/s).
pub const REPLAY_WINDOW: u64 = 8192;

/// Bits per bitmap word.
const WORD_BITS: u64 = 64;
/// Number of 64-bit words in the ring.
const WORDS: usize = (REPLAY_WINDOW / WORD_BITS) as usize;

/// Remembers which recent counters were accepted.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far; `None` until the first packet.
    top: Option<u64>,
    /// Ring of `REPLAY_WINDOW` bits; bit `c % REPLAY_WINDOW` is set once counter `c` (inside the
    /// window) was accepted.
    bitmap: [u64; WORDS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is new.
    pub fn new() -> Self {
        Self {
            top: None,
            bitmap: [0; WORDS],
        }
    }

    /// Highest counter accepted so far.
    pub fn top(&self) -> Option<u64> {
        self.top
    }

    fn bit(counter: u64) -> (usize, u64) {
        let pos = counter % REPLAY_WINDOW;
        ((pos / WORD_BITS) as usize, 1u64 << (pos % WORD_BITS))
    }

    /// Whether `counter` would be accepted now (no state change). Safe to call before
    /// authenticating the packet.
    pub fn would_accept(&self, counter: u64) -> bool {
        let Some(top) = self.top else {
            return true;
        };
        if counter > top {
            return true;
        }
        if top - counter >= REPLAY_WINDOW {
            return false;
        }
        let (word, mask) = Self::bit(counter);
        self.bitmap[word] & mask == 0
    }

    /// Accepts `counter` if it is new, recording it; returns false for duplicates and counters
    /// that fell out of the window. Call only after the packet authenticated.
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        if !self.would_accept(counter) {
            return false;
        }
        match self.top {
            Some(top) if counter <= top => {}
            Some(top) => {
                self.slide(top, counter);
                self.top = Some(counter);
            }
            None => {
                self.top = Some(counter);
            }
        }
        let (word, mask) = Self::bit(counter);
        self.bitmap[word] |= mask;
        true
    }

    /// Moves the window from `top` to `new_top` (> top), clearing the bits of the counters that
    /// left the window.
    fn slide(&mut self, top: u64, new_top: u64) {
        let distance = new_top - top;
        if distance >= REPLAY_WINDOW {
            self.bitmap = [0; WORDS];
            return;
        }
        // Walk the skipped counters top+1..=new_top by offset so that nothing overflows near
        // u64::MAX.
        let mut offset = 1u64;
        while offset <= distance {
            let c = top + offset;
            let (word, mask) = Self::bit(c);
            // Clear whole words when aligned and fully inside the span: a big jump costs at most
            // WORDS iterations instead of REPLAY_WINDOW.
            if c % WORD_BITS == 0 && distance - offset >= WORD_BITS - 1 {
                self.bitmap[word] = 0;
                offset += WORD_BITS;
            } else {
                self.bitmap[word] &= !mask;
                offset += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_packet_and_counter_zero() {
        let mut w = ReplayWindow::new();
        assert!(w.would_accept(0));
        assert!(w.check_and_update(0));
        assert!(!w.check_and_update(0), "duplicate of counter 0");
        assert!(w.check_and_update(1));
        assert_eq!(w.top(), Some(1));
    }

    #[test]
    fn first_packet_may_be_large() {
        let mut w = ReplayWindow::new();
        assert!(w.check_and_update(100_000));
        assert!(!w.check_and_update(100_000));
        assert!(w.check_and_update(99_999));
        assert!(!w.check_and_update(100_000 - REPLAY_WINDOW));
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut w = ReplayWindow::new();
        for c in [5u64, 3, 9, 4, 8] {
            assert!(w.check_and_update(c), "{c} is new");
        }
        for c in [5u64, 3, 9, 4, 8] {
            assert!(!w.check_and_update(c), "{c} is a duplicate");
        }
        assert!(w.check_and_update(7));
        assert!(w.check_and_update(0));
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        let top = 20_000;
        assert!(w.check_and_update(top));
        assert!(
            w.would_accept(top - (REPLAY_WINDOW - 1)),
            "exactly window-1 behind is inside"
        );
        assert!(w.check_and_update(top - (REPLAY_WINDOW - 1)));
        assert!(!w.check_and_update(top - (REPLAY_WINDOW - 1)));
        assert!(
            !w.would_accept(top - REPLAY_WINDOW),
            "window behind is outside"
        );
        assert!(!w.check_and_update(top - REPLAY_WINDOW));
    }

    #[test]
    fn far_jump_clears_bits() {
        let mut w = ReplayWindow::new();
        for c in 0..100 {
            assert!(w.check_and_update(c));
        }
        // Jump so that the old counters' ring bits are reused by counters now in the window.
        let jump = 10 * REPLAY_WINDOW + 50;
        assert!(w.check_and_update(jump));
        // These share ring positions with 0..100 (already set before the jump) but are new.
        for c in (jump - 40)..jump {
            assert!(w.check_and_update(c), "{c} must be new after the jump");
        }
        assert!(!w.check_and_update(99));
    }

    #[test]
    fn partial_slide_clears_only_skipped() {
        let mut w = ReplayWindow::new();
        for c in 0..REPLAY_WINDOW {
            assert!(w.check_and_update(c));
        }
        // Slide by 200: counters 0..200 leave, their bits are reused by 8192..8392.
        let new_top = REPLAY_WINDOW + 199;
        assert!(w.check_and_update(new_top));
        for c in REPLAY_WINDOW..new_top {
            assert!(w.check_and_update(c), "{c} is new");
        }
        for c in 200..REPLAY_WINDOW {
            assert!(!w.check_and_update(c), "{c} is still remembered");
        }
        assert!(!w.check_and_update(199), "left the window");
    }

    #[test]
    fn near_u64_max() {
        let mut w = ReplayWindow::new();
        assert!(w.check_and_update(u64::MAX - 1));
        assert!(w.check_and_update(u64::MAX));
        assert!(!w.check_and_update(u64::MAX));
        assert!(!w.check_and_update(u64::MAX - 1));
        assert!(w.check_and_update(u64::MAX - 2));
        assert!(!w.check_and_update(u64::MAX - REPLAY_WINDOW));
        assert!(!w.check_and_update(0));
    }
}
