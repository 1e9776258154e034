//! Scores against the references, and the cascade row built from two models' outputs.

use std::collections::BTreeMap;

use crate::inputs::Reference;
use crate::metrics::{contains_match, exact_match, ChrfStats};
use crate::results::{CascadeResult, ModelResult, Output, Quality};
use crate::run::language_code;

/// Scores `outputs` against `references` (per photo name); `None` without references.
/// A reference whose output is missing or failed scores as wrong (an empty caption).
pub(crate) fn score(
    outputs: &[Output],
    references: &BTreeMap<String, Vec<Reference>>,
    languages: &[String],
) -> Option<Quality> {
    if references.is_empty() {
        return None;
    }
    let mut q = Quality::default();
    let (mut exact, mut contains) = (0, 0);
    let mut chrf = ChrfStats::default();
    for (photo, refs) in references {
        for r in refs {
            match r {
                Reference::Caption { language, text } => {
                    let code = language_code(*language);
                    // A caption in a language that was not described has nothing to score.
                    if !languages.iter().any(|l| l == code) {
                        continue;
                    }
                    let hyp = find(outputs, "describe", photo, |o| {
                        o.language.as_deref() == Some(code)
                    });
                    chrf.add(&ChrfStats::new(hyp.unwrap_or(""), text));
                    q.captions_scored += 1;
                }
                Reference::Answer { question, answers } => {
                    let hyp = find(outputs, "vqa", photo, |o| {
                        o.question.as_deref() == Some(question)
                    });
                    let hyp = hyp.unwrap_or("");
                    exact += usize::from(!hyp.is_empty() && exact_match(hyp, answers));
                    contains += usize::from(contains_match(hyp, answers));
                    q.vqa_scored += 1;
                }
            }
        }
    }
    if q.vqa_scored > 0 {
        q.vqa_exact_match = Some(exact as f64 / q.vqa_scored as f64);
        q.vqa_contains_match = Some(contains as f64 / q.vqa_scored as f64);
    }
    if q.captions_scored > 0 {
        q.caption_chrf = Some(chrf.score());
    }
    Some(q)
}

fn find<'a>(
    outputs: &'a [Output],
    task: &str,
    photo: &str,
    which: impl Fn(&Output) -> bool,
) -> Option<&'a str> {
    outputs
        .iter()
        .find(|o| o.task == task && o.subject == photo && which(o))
        .and_then(|o| o.text.as_deref())
}

/// The cheap model's mean token log-probability over its outputs for `photo` (describe
/// and vqa), weighted by tokens; `None` when it produced no token for the photo.
fn photo_logprob(outputs: &[Output], photo: &str) -> Option<f64> {
    let (mut sum, mut tokens) = (0.0, 0);
    for o in outputs
        .iter()
        .filter(|o| o.subject == photo && o.task != "relate")
    {
        if let (Some(lp), Some(n)) = (o.mean_logprob, o.tokens) {
            sum += lp * n as f64;
            tokens += n;
        }
    }
    (tokens > 0).then(|| sum / tokens as f64)
}

/// The cascade row: the cheap model's outputs, with the photos it was unsure of (mean
/// token log-probability under `threshold`, or no tokens) taken from the strong model.
pub(crate) fn cascade(
    cheap: &ModelResult,
    strong: &ModelResult,
    threshold: f64,
    photos: &[String],
    references: &BTreeMap<String, Vec<Reference>>,
    languages: &[String],
    price_per_hour: Option<f64>,
) -> CascadeResult {
    let mut row = CascadeResult {
        cheap: cheap.model.clone(),
        strong: strong.model.clone(),
        threshold,
        error: None,
        routed_photos: vec![],
        routed_share: None,
        seconds_per_photo: None,
        cost_per_1000_photos: None,
        quality: None,
    };
    for m in [cheap, strong] {
        if let Some(e) = &m.error {
            row.error = Some(format!("{} did not run: {e}", m.model));
            return row;
        }
    }
    row.routed_photos = photos
        .iter()
        .filter(|p| photo_logprob(&cheap.outputs, p).is_none_or(|lp| lp < threshold))
        .cloned()
        .collect();
    let share = row.routed_photos.len() as f64 / photos.len().max(1) as f64;
    row.routed_share = Some(share);
    let per_photo = |m: &ModelResult| {
        m.metrics
            .as_ref()
            .and_then(|x| x.throughput_photos_per_s)
            .map(|t| 1.0 / t)
    };
    if let (Some(c), Some(s)) = (per_photo(cheap), per_photo(strong)) {
        let seconds = c + share * s;
        row.seconds_per_photo = Some(seconds);
        row.cost_per_1000_photos = price_per_hour.map(|p| cost_per_1000(p, seconds));
    }
    let routed = |o: &Output| row.routed_photos.contains(&o.subject);
    let combined: Vec<Output> = cheap
        .outputs
        .iter()
        .filter(|o| o.task != "relate" && !routed(o))
        .chain(
            strong
                .outputs
                .iter()
                .filter(|o| o.task != "relate" && routed(o)),
        )
        .cloned()
        .collect();
    row.quality = score(&combined, references, languages);
    row
}

/// What 1,000 photos cost at `price_per_hour` and `seconds_per_photo`.
pub fn cost_per_1000(price_per_hour: f64, seconds_per_photo: f64) -> f64 {
    price_per_hour * seconds_per_photo * 1000.0 / 3600.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Metrics;
    use vlm_core::Language;

    fn out(task: &str, photo: &str, text: &str, lp: f64) -> Output {
        Output {
            task: task.into(),
            subject: photo.into(),
            language: (task == "describe").then(|| "zh".into()),
            question: (task == "vqa").then(|| "主菜?".into()),
            text: Some(text.into()),
            error: None,
            tokens: Some(4),
            mean_logprob: Some(lp),
            multi_image: None,
        }
    }

    fn model(name: &str, throughput: f64, outputs: Vec<Output>) -> ModelResult {
        ModelResult {
            model: name.into(),
            name: name.into(),
            error: None,
            info: None,
            metrics: Some(Metrics {
                load_s: 1.0,
                first_call_s: 1.0,
                latency_p50_s: None,
                latency_p95_s: None,
                latency_samples: 0,
                throughput_photos_per_s: Some(throughput),
                throughput_batch_size: 1,
                time_to_first_token_s: None,
                decode_tokens_per_s: None,
                peak_gpu_memory_bytes: None,
                gpu_memory_note: None,
                weights_bytes: 0,
                cost_per_hour: None,
                cost_per_1000_photos: None,
            }),
            quality: None,
            outputs,
        }
    }

    fn references() -> BTreeMap<String, Vec<Reference>> {
        let answer = |a: &str| Reference::Answer {
            question: "主菜?".into(),
            answers: vec![a.into()],
        };
        let mut refs = BTreeMap::new();
        refs.insert("a".to_string(), vec![answer("红烧肉")]);
        refs.insert(
            "b".to_string(),
            vec![
                answer("清蒸鱼"),
                Reference::Caption {
                    language: Language::English,
                    text: "not described in English".into(),
                },
            ],
        );
        refs
    }

    #[test]
    fn scores_only_what_has_references_and_outputs_in_its_language() {
        let outputs = vec![
            out("vqa", "a", "红烧肉。", -0.1),
            out("vqa", "b", "主菜是清蒸鱼", -0.1),
        ];
        let q = score(&outputs, &references(), &["zh".into()]).unwrap();
        assert_eq!(q.vqa_scored, 2);
        assert_eq!(q.vqa_exact_match, Some(0.5));
        assert_eq!(q.vqa_contains_match, Some(1.0));
        assert_eq!(q.captions_scored, 0, "no English description to score");
        assert!(score(&outputs, &BTreeMap::new(), &["zh".into()]).is_none());
    }

    #[test]
    fn cascade_routes_unsure_photos_and_adds_their_cost() {
        let cheap = model(
            "cheap",
            10.0,
            vec![
                out("vqa", "a", "红烧肉", -0.2),
                out("vqa", "b", "不知道", -2.0),
            ],
        );
        let strong = model(
            "strong",
            2.0,
            vec![out("vqa", "a", "鱼", -0.1), out("vqa", "b", "清蒸鱼", -0.1)],
        );
        let photos = ["a".to_string(), "b".to_string()];
        let row = cascade(
            &cheap,
            &strong,
            -1.0,
            &photos,
            &references(),
            &["zh".into()],
            Some(3.6),
        );
        assert_eq!(row.routed_photos, ["b"]);
        assert_eq!(row.routed_share, Some(0.5));
        // 0.1 s (cheap, every photo) + 0.5 × 0.5 s (strong, the routed half).
        assert!((row.seconds_per_photo.unwrap() - 0.35).abs() < 1e-12);
        assert!((row.cost_per_1000_photos.unwrap() - 0.35).abs() < 1e-12);
        // The cheap model's answer for a, the strong one's for b: both right.
        assert_eq!(row.quality.unwrap().vqa_exact_match, Some(1.0));
    }
}
