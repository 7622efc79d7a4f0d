//! The check a close embedding must also pass before a stored answer is
//! reused: the two questions must not be a *minimal pair*.
//!
//! Small embedding models place "how do I reset my password" and "how do I
//! reset my username" closer together (cosine 0.97 with
//! multilingual-e5-small) than most real paraphrases ("forgot my password,
//! what now?", 0.88): a sentence with one word changed stays near where it
//! was, whatever that word did to its meaning. Measured on the labelled set
//! (`tests/data/semantic_pairs.tsv`), near-misses score *higher* than
//! paraphrases at the median, so no similarity threshold alone keeps false
//! hits rare. What tells them apart is the wording: a paraphrase says the
//! same thing in other words, a near-miss says another thing in the same
//! words. So two questions are taken as the same only when
//!
//! - they hold the same numbers, and
//! - they differ only in function words ("how do I …" / "how can I …"), or
//!   they are not the same sentence with a few words changed: the words
//!   they share in order cover less than [`MIN_SHARED_SHARE`] of the longer
//!   one, or more than [`MAX_CHANGED_WORDS`] content words differ.
//!
//! Swapped order ("from Paris to London" / "from London to Paris") counts
//! as changed words. The rule errs towards a miss: some paraphrases that
//! keep most of their words and change one ("change" / "update") are
//! missed. `docs/cache.md` gives the hit and false-hit rates it yields.

/// Below this share of the longer question's words kept in order, two
/// questions are different sentences, not one sentence edited.
const MIN_SHARED_SHARE: f32 = 0.4;
/// More content words changed than this is a rewording, not an edit.
const MAX_CHANGED_WORDS: usize = 6;
/// Words compared; a question longer than this is compared by its start.
const MAX_WORDS: usize = 96;

/// Words that change how a question is asked, not what it asks about.
/// Question words (`what`, `when`, `where`, …) and directions (`to`,
/// `from`) are not among them: "when is payday" and "where is payday" are
/// different questions, and so are "copy a file to a USB drive" and "copy
/// a file from a USB drive".
const FUNCTION_WORDS: &[&str] = &[
    "a", "am", "an", "and", "any", "are", "as", "at", "be", "but", "by", "can", "could", "did",
    "do", "does", "for", "get", "got", "had", "has", "have", "i", "if", "in", "is", "it", "its",
    "just", "me", "my", "of", "or", "our", "please", "shall", "should", "so", "some", "than",
    "that", "the", "then", "there", "these", "this", "those", "was", "we", "were", "will", "with",
    "would", "you", "your",
];

/// Whether two questions may share an answer, as far as their wording
/// says (the embedding's similarity is checked apart). Symmetric: an
/// alignment of the words may tie several ways, and each order is checked.
pub(crate) fn same_question(a: &str, b: &str) -> bool {
    let (wa, wb) = (words(a), words(b));
    one_way(&wa, &wb) && one_way(&wb, &wa)
}

fn one_way(wa: &[String], wb: &[String]) -> bool {
    if numbers(wa) != numbers(wb) {
        return false;
    }
    let (shared, kept_a, kept_b) = common_words(wa, wb);
    let changed = |w: &[String], kept: &[bool]| {
        w.iter()
            .zip(kept)
            .filter(|(w, kept)| !**kept && !FUNCTION_WORDS.contains(&w.as_str()))
            .count()
    };
    let changed = changed(wa, &kept_a) + changed(wb, &kept_b);
    if changed == 0 {
        return true;
    }
    let longer = wa.len().max(wb.len()).max(1);
    let edited = shared as f32 / longer as f32 >= MIN_SHARED_SHARE && changed <= MAX_CHANGED_WORDS;
    !edited
}

/// The words that are numbers, sorted.
fn numbers(words: &[String]) -> Vec<&str> {
    let mut n: Vec<&str> = words
        .iter()
        .map(String::as_str)
        .filter(|w| w.bytes().all(|c| c.is_ascii_digit()))
        .collect();
    n.sort_unstable();
    n
}

/// Lower-case words (letters and digits), up to [`MAX_WORDS`].
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_WORDS)
        .map(str::to_lowercase)
        .collect()
}

/// The longest common subsequence of two word lists: its length, and for
/// each list which of its words are in it.
fn common_words(a: &[String], b: &[String]) -> (usize, Vec<bool>, Vec<bool>) {
    let (n, m) = (a.len(), b.len());
    let mut table = vec![0u16; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in 0..n {
        for j in 0..m {
            table[at(i + 1, j + 1)] = if a[i] == b[j] {
                table[at(i, j)] + 1
            } else {
                table[at(i, j + 1)].max(table[at(i + 1, j)])
            };
        }
    }
    let (mut kept_a, mut kept_b) = (vec![false; n], vec![false; m]);
    let (mut i, mut j) = (n, m);
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            kept_a[i - 1] = true;
            kept_b[j - 1] = true;
            i -= 1;
            j -= 1;
        } else if table[at(i - 1, j)] >= table[at(i, j - 1)] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    (usize::from(table[at(n, m)]), kept_a, kept_b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paraphrases_pass() {
        for (a, b) in [
            (
                "how do I reset my password",
                "forgot my password, what now?",
            ),
            ("How do I reset my password?", "how can i reset my password"),
            (
                "where is my order",
                "can you tell me the status of my order",
            ),
            ("same words", "same words"),
        ] {
            assert!(same_question(a, b), "{a} / {b}");
            assert!(same_question(b, a), "{b} / {a}");
        }
    }

    #[test]
    fn minimal_pairs_do_not() {
        for (a, b) in [
            ("how do I reset my password", "how do I reset my username"),
            (
                "flights from Paris to London",
                "flights from London to Paris",
            ),
            (
                "how do I turn on two-factor authentication",
                "how do I turn off two-factor authentication",
            ),
            ("what is 15 percent of 200", "what is 25 percent of 200"),
            ("when is payday", "where is payday"),
            (
                "is the hotel pool open in winter",
                "is the hotel pool open in summer",
            ),
        ] {
            assert!(!same_question(a, b), "{a} / {b}");
            assert!(!same_question(b, a), "{b} / {a}");
        }
    }

    #[test]
    fn long_questions_are_bounded() {
        let long = "word ".repeat(10_000);
        assert!(same_question(&long, &long));
        assert_eq!(words(&long).len(), MAX_WORDS);
    }
}
