//! A bounded set of reusable data buffers shared by the threads of a
//! channel set: what bounds the memory of a parallel migration (at most
//! `max` buffers of one chunk exist, whatever the state size).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Reusable buffers, at most `max` of them.
pub struct BufPool {
    state: Mutex<(Vec<Vec<u8>>, usize)>,
    freed: Condvar,
    max: usize,
    size: usize,
}

impl BufPool {
    /// Up to `max` buffers of `size` bytes (allocated on first use).
    pub fn new(max: usize, size: usize) -> Self {
        Self {
            state: Mutex::new((Vec::new(), 0)),
            freed: Condvar::new(),
            max: max.max(1),
            size,
        }
    }

    /// The size of a buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A buffer of `size()` bytes, waiting at most `wait` for one to come
    /// back (`None`: none came).
    pub fn take(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(mut b) = st.0.pop() {
                if b.len() < self.size {
                    b.resize(self.size, 0);
                }
                return Some(b);
            }
            if st.1 < self.max {
                st.1 += 1;
                return Some(vec![0u8; self.size]);
            }
            let (g, t) = self
                .freed
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if t.timed_out() && st.0.is_empty() {
                return None;
            }
        }
    }

    /// A buffer, without waiting: a spare one, or a new one beyond the
    /// bound (for a reader that must not block; the caller bounds its
    /// own queue).
    pub fn take_now(&self) -> Vec<u8> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0.pop() {
            Some(b) => b,
            None => {
                st.1 += 1;
                Vec::new()
            }
        }
    }

    /// Gives a buffer back.
    pub fn give(&self, b: Vec<u8>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.len() < self.max {
            st.0.push(b);
        } else {
            st.1 = st.1.saturating_sub(1);
        }
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_buffers_exist() {
        let p = BufPool::new(2, 16);
        let a = p.take(Duration::ZERO).unwrap();
        let b = p.take(Duration::ZERO).unwrap();
        assert!(p.take(Duration::from_millis(10)).is_none());
        p.give(a);
        let c = p.take(Duration::ZERO).unwrap();
        assert_eq!(c.len(), 16);
        drop((b, c));
    }
}
