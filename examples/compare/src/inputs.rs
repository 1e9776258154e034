//! What the comparison runs on: the photos folder, trip folders, questions (q.jsonl) and
//! references (refs.jsonl). A photo that cannot be read is listed, not fatal; a line of a
//! JSONL file that cannot be read is an error naming the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vlm_core::{Image, Language};

use crate::results::{FailedPhoto, UnknownReference};
use crate::CompareError;

/// File endings read as photos (what `Image::open` decodes).
const PHOTO_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// The founders' question, and one in English, asked of every photo when no q.jsonl is given.
pub const DEFAULT_QUESTIONS: &[&str] = &[
    "照片中主菜是什么?",
    "What is the main subject of this photo?",
];

/// A decoded photo and its name (its path under the folder given).
pub struct Photo {
    pub name: String,
    pub image: Image,
}

/// Photos of one trip (a subfolder of `--trips`), in file-name order.
pub struct Trip {
    pub name: String,
    pub photos: Vec<Photo>,
}

/// One question about one photo.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Question {
    pub photo: String,
    pub question: String,
}

/// What a reference says about a photo.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    /// A caption, compared with the description in its language by chrF.
    Caption { language: Language, text: String },
    /// Acceptable answers to a question.
    Answer {
        question: String,
        answers: Vec<String>,
    },
}

/// Everything read from the command line's folders and files.
pub struct Inputs {
    pub photos: Vec<Photo>,
    pub failed_photos: Vec<FailedPhoto>,
    pub trips: Vec<Trip>,
    /// Per photo, in photo order, then question order.
    pub questions: Vec<Question>,
    /// Per photo name.
    pub references: BTreeMap<String, Vec<Reference>>,
    pub unknown_references: Vec<UnknownReference>,
}

impl Inputs {
    /// Reads the folders and files; photos are decoded once, here, so that timings exclude
    /// file decoding and a photo that cannot be read fails once, not once per model.
    pub fn read(
        photos_dir: &Path,
        trips_dir: Option<&Path>,
        questions: Option<&Path>,
        references: Option<&Path>,
    ) -> Result<Self, CompareError> {
        let (photos, mut failed_photos) = read_photos(photos_dir, "")?;
        if photos.is_empty() {
            return Err(CompareError::NoPhotos(photos_dir.to_path_buf()));
        }
        let mut trips = Vec::new();
        if let Some(dir) = trips_dir {
            for sub in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
                let name = file_name(&sub);
                let (photos, failed) = read_photos(&sub, &format!("{name}/"))?;
                failed_photos.extend(failed);
                if !photos.is_empty() {
                    trips.push(Trip { name, photos });
                }
            }
        }
        let names: Vec<&str> = photos.iter().map(|p| p.name.as_str()).collect();
        let mut unknown_references = Vec::new();
        let mut refs: BTreeMap<String, Vec<Reference>> = BTreeMap::new();
        if let Some(path) = references {
            for (line, r) in read_jsonl::<ReferenceLine>(path)? {
                if !names.contains(&r.photo.as_str()) {
                    unknown_references.push(UnknownReference {
                        line,
                        photo: r.photo,
                    });
                    continue;
                }
                let photo = r.photo.clone();
                let reference = r
                    .into_reference()
                    .map_err(|message| CompareError::BadLine {
                        path: path.to_path_buf(),
                        line,
                        message,
                    })?;
                refs.entry(photo).or_default().push(reference);
            }
        }
        let questions = match questions {
            Some(path) => read_questions(path, &names)?,
            None => names
                .iter()
                .flat_map(|p| {
                    DEFAULT_QUESTIONS.iter().map(|q| Question {
                        photo: p.to_string(),
                        question: q.to_string(),
                    })
                })
                .collect(),
        };
        let questions = with_reference_questions(questions, &refs, &names);
        Ok(Self {
            photos,
            failed_photos,
            trips,
            questions,
            references: refs,
            unknown_references,
        })
    }
}

/// A line of refs.jsonl: `{"photo": "dinner.jpg", "caption": "...", "language": "zh"}`
/// or `{"photo": "dinner.jpg", "question": "照片中主菜是什么?", "answer": "红烧肉"}`
/// (`"answers": [...]` for several acceptable ones).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceLine {
    photo: String,
    caption: Option<String>,
    language: Option<String>,
    question: Option<String>,
    answer: Option<String>,
    answers: Option<Vec<String>>,
}

impl ReferenceLine {
    fn into_reference(self) -> Result<Reference, String> {
        match (self.caption, self.question) {
            (Some(text), None) => {
                let language = match self.language {
                    Some(l) => Language::parse(&l).map_err(|e| e.to_string())?,
                    None => Language::Auto,
                }
                .resolve(&text);
                Ok(Reference::Caption { language, text })
            }
            (None, Some(question)) => {
                let answers: Vec<String> = self
                    .answer
                    .into_iter()
                    .chain(self.answers.into_iter().flatten())
                    .collect();
                if answers.is_empty() {
                    return Err("a question needs \"answer\" or \"answers\"".into());
                }
                Ok(Reference::Answer { question, answers })
            }
            _ => Err("give either \"caption\" or \"question\" with \"answer\"".into()),
        }
    }
}

/// A line of q.jsonl: `{"question": "..."}` for every photo, or with `"photo"` for one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionLine {
    photo: Option<String>,
    question: String,
}

fn read_questions(path: &Path, names: &[&str]) -> Result<Vec<Question>, CompareError> {
    let lines = read_jsonl::<QuestionLine>(path)?;
    let mut out = Vec::new();
    for name in names {
        for (_, q) in &lines {
            if q.photo.as_deref().is_none_or(|p| p == *name) {
                out.push(Question {
                    photo: name.to_string(),
                    question: q.question.clone(),
                });
            }
        }
    }
    for (line, q) in &lines {
        if q.question.trim().is_empty() {
            return Err(CompareError::BadLine {
                path: path.to_path_buf(),
                line: *line,
                message: "the question is empty".into(),
            });
        }
        if let Some(p) = &q.photo {
            if !names.contains(&p.as_str()) {
                return Err(CompareError::BadLine {
                    path: path.to_path_buf(),
                    line: *line,
                    message: format!("no photo \"{p}\" in the photos folder (names are file names in that folder)"),
                });
            }
        }
    }
    Ok(out)
}

/// Adds every question a reference answers that is not asked already, so that each
/// reference answer has a model answer to score.
fn with_reference_questions(
    mut questions: Vec<Question>,
    refs: &BTreeMap<String, Vec<Reference>>,
    names: &[&str],
) -> Vec<Question> {
    for (photo, list) in refs {
        for r in list {
            if let Reference::Answer { question, .. } = r {
                let q = Question {
                    photo: photo.clone(),
                    question: question.clone(),
                };
                if !questions.contains(&q) {
                    questions.push(q);
                }
            }
        }
    }
    let order = |p: &str| names.iter().position(|n| *n == p).unwrap_or(usize::MAX);
    // Stable: within a photo, q.jsonl's order, then the references' questions.
    questions.sort_by_key(|q| order(&q.photo));
    questions
}

fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<(usize, T)>, CompareError> {
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(line).map_err(|e| CompareError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push((i + 1, value));
    }
    Ok(out)
}

fn read_photos(dir: &Path, prefix: &str) -> Result<(Vec<Photo>, Vec<FailedPhoto>), CompareError> {
    let mut photos = Vec::new();
    let mut failed = Vec::new();
    for path in sorted_entries(dir)? {
        let is_photo = path.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| PHOTO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !is_photo {
            continue;
        }
        let name = format!("{prefix}{}", file_name(&path));
        match Image::open(&path) {
            Ok(image) => photos.push(Photo { name, image }),
            Err(e) => failed.push(FailedPhoto {
                photo: name,
                error: e.to_string(),
            }),
        }
    }
    Ok((photos, failed))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, CompareError> {
    let io = |source| CompareError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)?;
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lines_become_captions_or_answers() {
        let caption: ReferenceLine =
            serde_json::from_str(r#"{"photo":"a.png","caption":"一桌菜"}"#).unwrap();
        assert_eq!(
            caption.into_reference(),
            Ok(Reference::Caption {
                language: Language::Chinese,
                text: "一桌菜".into()
            })
        );
        let answer: ReferenceLine = serde_json::from_str(
            r#"{"photo":"a.png","question":"how many?","answer":"two","answers":["2"]}"#,
        )
        .unwrap();
        assert_eq!(
            answer.into_reference(),
            Ok(Reference::Answer {
                question: "how many?".into(),
                answers: vec!["two".into(), "2".into()]
            })
        );
        let neither: ReferenceLine = serde_json::from_str(r#"{"photo":"a.png"}"#).unwrap();
        assert!(neither.into_reference().is_err());
        assert!(
            serde_json::from_str::<ReferenceLine>(r#"{"photo":"a.png","captoin":"x"}"#).is_err()
        );
    }

    #[test]
    fn reference_questions_are_asked_too() {
        let mut refs = BTreeMap::new();
        refs.insert(
            "b.png".to_string(),
            vec![Reference::Answer {
                question: "q2".into(),
                answers: vec!["x".into()],
            }],
        );
        let asked = vec![
            Question {
                photo: "a.png".into(),
                question: "q1".into(),
            },
            Question {
                photo: "b.png".into(),
                question: "q1".into(),
            },
        ];
        let all = with_reference_questions(asked, &refs, &["a.png", "b.png"]);
        let pairs: Vec<_> = all
            .iter()
            .map(|q| (q.photo.as_str(), q.question.as_str()))
            .collect();
        assert_eq!(pairs, [("a.png", "q1"), ("b.png", "q1"), ("b.png", "q2")]);
    }
}
