//! A prefix cache as vLLM keeps one, in outline: a prompt is cut into blocks of
//! [`BLOCK_TOKENS`] tokens, each block named by a hash chained over the blocks before it, and
//! a request reuses the leading blocks an earlier prompt left. The simulator does not
//! tokenise: a prompt is the canonical text of its messages (role and content, the same for
//! every chat-like API), taken as [`BYTES_PER_TOKEN`] bytes a token, the same estimate the
//! token counts use.
//!
//! Memory is bounded: at most `capacity` block hashes are kept. When full, the least recently
//! used half is dropped at once (approximate LRU: one linear pass every `capacity / 2`
//! insertions, so O(1) amortised per block).

use std::collections::HashMap;
use std::sync::Mutex;

use super::render;

/// Tokens per cache block (vLLM's default block size).
pub(crate) const BLOCK_TOKENS: u32 = 16;
/// Bytes of canonical prompt text per token.
pub(crate) const BYTES_PER_TOKEN: usize = 4;
const BLOCK_BYTES: usize = BLOCK_TOKENS as usize * BYTES_PER_TOKEN;

/// The block hashes of the prompts seen, with when each was last used.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    capacity: usize,
    blocks: Mutex<Blocks>,
}

#[derive(Debug, Default)]
struct Blocks {
    last_used: HashMap<u64, u64>,
    clock: u64,
}

impl PrefixCache {
    /// A cache of at most `capacity` blocks; 0 turns caching off.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            blocks: Mutex::new(Blocks::default()),
        }
    }

    /// Looks a prompt up and remembers its blocks: the number of its `prompt_tokens` found
    /// cached. Whole blocks only, and never the last token (vLLM always computes at least
    /// one token of a prompt).
    pub fn lookup(&self, prompt: &[u8], prompt_tokens: u32) -> u32 {
        if self.capacity == 0 || prompt_tokens == 0 {
            return 0;
        }
        let mut blocks = self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut hits = 0u32;
        let mut missed = false;
        let mut chain = 0u64;
        for block in prompt.chunks_exact(BLOCK_BYTES) {
            chain = render::mix(chain ^ render::hash(block), 7);
            blocks.clock += 1;
            let now = blocks.clock;
            match blocks.last_used.get_mut(&chain) {
                Some(used) if !missed => {
                    *used = now;
                    hits += 1;
                }
                _ => {
                    missed = true;
                    blocks.last_used.insert(chain, now);
                }
            }
            if blocks.last_used.len() > self.capacity {
                blocks.evict_older_half();
            }
        }
        let whole = (prompt_tokens - 1) / BLOCK_TOKENS * BLOCK_TOKENS;
        (hits * BLOCK_TOKENS).min(whole)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.blocks.lock().unwrap().last_used.len()
    }
}

impl Blocks {
    /// Drops the least recently used half.
    fn evict_older_half(&mut self) {
        let mut ages: Vec<u64> = self.last_used.values().copied().collect();
        let middle = ages.len() / 2;
        let (_, &mut cut, _) = ages.select_nth_unstable(middle);
        self.last_used.retain(|_, used| *used >= cut);
    }
}

/// Appends one message to a canonical prompt.
pub(crate) fn push_message(key: &mut Vec<u8>, role: &str, content: &str) {
    key.extend_from_slice(role.as_bytes());
    key.push(0);
    key.extend_from_slice(content.as_bytes());
    key.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str) -> Vec<u8> {
        let mut key = Vec::new();
        push_message(&mut key, "user", text);
        key
    }

    #[test]
    fn a_shared_prefix_is_cached_by_whole_blocks() {
        let cache = PrefixCache::new(1024);
        let long = "x".repeat(BLOCK_BYTES * 3);
        assert_eq!(cache.lookup(&prompt(&long), 60), 0);
        // The same prompt: every whole block but never the last token.
        assert_eq!(cache.lookup(&prompt(&long), 60), 48);
        assert_eq!(cache.lookup(&prompt(&long), 49), 48);
        assert_eq!(cache.lookup(&prompt(&long), 48), 32);
        // A longer prompt starting with it: the shared blocks.
        let longer = format!("{long}{}", "y".repeat(BLOCK_BYTES * 2));
        assert_eq!(cache.lookup(&prompt(&longer), 90), 48);
        // A different first block: nothing, even if later blocks were seen.
        let other = format!("z{}", &long[1..]);
        assert_eq!(cache.lookup(&prompt(&other), 60), 0);
        // Off.
        let off = PrefixCache::new(0);
        off.lookup(&prompt(&long), 60);
        assert_eq!(off.lookup(&prompt(&long), 60), 0);
    }

    #[test]
    fn memory_is_bounded_and_recent_blocks_survive() {
        let cache = PrefixCache::new(64);
        let kept = "k".repeat(BLOCK_BYTES * 2);
        for i in 0..500 {
            cache.lookup(&prompt(&format!("{i:08}{}", "p".repeat(BLOCK_BYTES))), 20);
            // Used all along: never the least recently used.
            assert!(cache.len() <= 64);
            if i > 0 {
                assert_eq!(cache.lookup(&prompt(&kept), 40), 32, "round {i}");
            } else {
                cache.lookup(&prompt(&kept), 40);
            }
        }
    }
}
