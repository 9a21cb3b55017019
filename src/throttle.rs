//! Token buckets: how fast a destination sends (`delivery.rate`) and a route takes messages
//! in (`throttle`). A bucket holds up to `burst` tokens and gains `rate` of them a second;
//! each message takes one. Waiting for a token is the backpressure: nothing is buffered for
//! it — a destination's deliveries stay pending in the store, a sender waits for its
//! acknowledgement.

use crate::config::values::Rate;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bucket {
    per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket: `burst` messages may go at once, then `rate`. Without `burst`, as many
    /// as the rate gives in a second (at least one).
    pub fn new(rate: Rate, burst: Option<u32>) -> Bucket {
        let per_second = rate.per_second();
        let burst = burst.map_or(per_second.ceil(), f64::from).max(1.0);
        Bucket {
            per_second,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let gained = now.duration_since(s.at).as_secs_f64() * self.per_second;
        s.tokens = (s.tokens + gained).min(self.burst);
        s.at = now;
        f(&mut s)
    }

    /// Takes up to `wanted` tokens, as many as there are now; says how many it took, and when
    /// none, how long until the next one.
    pub fn take_up_to(&self, wanted: usize) -> Result<usize, Duration> {
        self.with_state(|s| {
            let n = (s.tokens.floor() as usize).min(wanted);
            if n == 0 && wanted > 0 {
                return Err(Duration::from_secs_f64((1.0 - s.tokens) / self.per_second));
            }
            s.tokens -= n as f64;
            Ok(n)
        })
    }

    /// Gives back tokens taken and not used (a claim that found less than it could take).
    pub fn give_back(&self, n: usize) {
        self.with_state(|s| s.tokens = (s.tokens + n as f64).min(self.burst));
    }

    /// Waits for one token and takes it.
    pub async fn acquire(&self) {
        while let Err(wait) = self.take_up_to(1) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_burst_then_says_when_the_next_token_comes() {
        let b = Bucket::new("10/s".parse::<Rate>().unwrap(), Some(3));
        assert_eq!(b.take_up_to(5), Ok(3));
        let wait = b.take_up_to(1).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        b.give_back(2);
        assert_eq!(b.take_up_to(5), Ok(2));
        // Without a burst: a second's worth.
        let b = Bucket::new("600/min".parse::<Rate>().unwrap(), None);
        assert_eq!(b.take_up_to(50), Ok(10));
        let slow = Bucket::new("1/h".parse::<Rate>().unwrap(), None);
        assert_eq!(slow.take_up_to(2), Ok(1));
        assert!(slow.take_up_to(1).unwrap_err() > Duration::from_secs(3500));
    }
}
