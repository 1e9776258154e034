//! Quality and timing arithmetic: chrF (character n-grams, so Chinese needs no word
//! segmentation), VQA exact and contains match after normalisation, percentiles.

use std::collections::HashMap;

/// chrF's character n-gram orders (sacrebleu's default `char_order`).
const CHRF_ORDER: usize = 6;
/// chrF's β: recall weighs β² times as much as precision (sacrebleu's default; "chrF2").
const CHRF_BETA: f64 = 2.0;

/// Per n-gram order: n-grams in the hypothesis, in the reference, and matched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChrfStats([[usize; 3]; CHRF_ORDER]);

impl ChrfStats {
    /// The statistics of one hypothesis against one reference (whitespace is dropped first,
    /// as sacrebleu does; case is kept).
    pub fn new(hypothesis: &str, reference: &str) -> Self {
        let hyp: Vec<char> = hypothesis.chars().filter(|c| !c.is_whitespace()).collect();
        let refs: Vec<char> = reference.chars().filter(|c| !c.is_whitespace()).collect();
        let mut stats = [[0; 3]; CHRF_ORDER];
        for (n, s) in stats.iter_mut().enumerate() {
            let (h, r) = (ngrams(&hyp, n + 1), ngrams(&refs, n + 1));
            let matched = h
                .iter()
                .map(|(gram, count)| (*count).min(r.get(gram).copied().unwrap_or(0)))
                .sum();
            *s = [h.values().sum(), r.values().sum(), matched];
        }
        Self(stats)
    }

    /// Adds another pair's statistics (a corpus-level score sums them first).
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// chrF in 0..=100, as sacrebleu 2.x computes it: precision and recall averaged over
    /// the orders that have n-grams on both sides, then F-β.
    pub fn score(&self) -> f64 {
        let (mut precision, mut recall, mut orders) = (0.0, 0.0, 0);
        for &[hyp, reference, matched] in &self.0 {
            if hyp > 0 && reference > 0 {
                precision += matched as f64 / hyp as f64;
                recall += matched as f64 / reference as f64;
                orders += 1;
            }
        }
        if orders == 0 {
            return 0.0;
        }
        let (p, r) = (precision / orders as f64, recall / orders as f64);
        let b2 = CHRF_BETA * CHRF_BETA;
        if p + r == 0.0 {
            0.0
        } else {
            100.0 * (1.0 + b2) * p * r / (b2 * p + r)
        }
    }
}

fn ngrams(chars: &[char], n: usize) -> HashMap<&[char], usize> {
    let mut counts = HashMap::new();
    for gram in chars.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// chrF of one hypothesis against one reference.
pub fn chrf(hypothesis: &str, reference: &str) -> f64 {
    ChrfStats::new(hypothesis, reference).score()
}

/// An answer as VQA scoring compares it: lowercase, full-width forms folded to ASCII,
/// punctuation (ASCII and CJK) dropped, English articles dropped, spaces collapsed.
pub fn normalise_answer(text: &str) -> String {
    let folded: String = text
        .chars()
        .map(|c| match c as u32 {
            // Full-width ASCII variants (Ａ, ０, ？) to ASCII; the ideographic space too.
            0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            0x3000 => ' ',
            _ => c,
        })
        .flat_map(char::to_lowercase)
        .map(|c| if is_punctuation(c) { ' ' } else { c })
        .collect();
    folded
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32,
            0x3001..=0x3003 | 0x3008..=0x3011 | 0x3014..=0x301F // 、。〃〈〉《》「」『』【】〔〕…
            | 0x2010..=0x2027 // dashes, quotes, ellipsis
            | 0xFE10..=0xFE1F | 0xFE30..=0xFE4F // vertical and CJK compatibility forms
        )
}

/// Whether the normalised answer equals one of the normalised references.
pub fn exact_match(answer: &str, references: &[String]) -> bool {
    let a = normalise_answer(answer);
    references.iter().any(|r| normalise_answer(r) == a)
}

/// Whether a normalised reference occurs in the normalised answer (a model that answers
/// "the main dish is braised pork" to "braised pork" is right, and exact match misses it).
pub fn contains_match(answer: &str, references: &[String]) -> bool {
    let a = normalise_answer(answer);
    references.iter().any(|r| {
        let r = normalise_answer(r);
        !r.is_empty() && a.contains(&r)
    })
}

/// The `q`-quantile (0..=1) of `values` by linear interpolation between the closest ranks
/// (numpy's default); `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from sacrebleu 2.5 (`CHRF().sentence_score(hyp, [ref]).score`).
    #[test]
    fn chrf_matches_sacrebleu() {
        let cases = [
            (
                "a cat sat on the mat",
                "the cat sat on a mat",
                58.02336552336552,
            ),
            ("一只猫坐在垫子上", "猫坐在垫子上面", 70.13535800849233),
            ("The dog runs", "the dog ran", 50.556654566295855),
            ("红烧肉", "红烧肉", 100.0),
            ("", "红烧肉", 0.0),
            ("xyz", "abc", 0.0),
        ];
        for (hyp, reference, expected) in cases {
            let got = chrf(hyp, reference);
            assert!(
                (got - expected).abs() < 1e-9,
                "{hyp:?}: {got} vs {expected}"
            );
        }
    }

    /// By hand: "ab" against "abc": unigrams 2/2 precision, 2/3 recall; bigrams 1/1 and
    /// 1/2; trigrams only on the reference side, so two orders count: P = 1, R = 7/12,
    /// F2 = 5·P·R / (4P + R) = (35/12) / (55/12) = 7/11.
    #[test]
    fn chrf_by_hand() {
        assert!((chrf("ab", "abc") - 700.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn corpus_chrf_sums_statistics() {
        let mut total = ChrfStats::new("ab", "abc");
        total.add(&ChrfStats::new("ab", "abc"));
        assert!((total.score() - 700.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn answers_are_normalised() {
        assert_eq!(normalise_answer("  The Braised-Pork!  "), "braised pork");
        assert_eq!(normalise_answer("红烧肉。"), "红烧肉");
        assert_eq!(normalise_answer("ＴＷＯ？"), "two");
        assert!(exact_match("Two.", &["two".into()]));
        assert!(!exact_match("two dogs", &["two".into()]));
        assert!(contains_match("主菜是红烧肉。", &["红烧肉".into()]));
        assert!(!contains_match("清蒸鱼", &["红烧肉".into()]));
        assert!(
            !contains_match("anything", &["...".into()]),
            "an empty reference matches nothing"
        );
    }

    #[test]
    fn percentiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(4.0));
        assert!((percentile(&v, 0.95).unwrap() - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[], 0.5), None);
    }
}
