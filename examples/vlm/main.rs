//! `vlm`: describe, ask about and relate photos from the command line.
//!
//! ```text
//! vlm describe --model Qwen/Qwen2.5-VL-3B-Instruct --image dinner.jpg
//! vlm ask --model DIR --image a.jpg --max-new-tokens 12 --greedy --json "照片中主菜是什么?"
//! vlm relate --model DIR --image airport.jpg --image temple.jpg --image hotel.jpg
//! vlm locate --model DIR --image a.jpg "the cake" [--draw out.png] [--json]
//! vlm generate --model DIR --image a.jpg --raw-prompt "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n"
//! vlm convert-minigpt4 --model minigpt4-7b/
//! vlm quantize --model Qwen/Qwen2.5-VL-7B-Instruct --quant int4 --output qwen2.5-vl-7b-int4/
//! vlm devices [--json]
//! vlm compare --model A --model B --photos DIR --price-per-hour 5.8 --report OUT/
//! ```
//!
//! Warnings go to stderr (`-v`: also each load step and its time; `RUST_LOG` overrides).

mod args;
mod compare;
mod devices;
mod locate;
mod logging;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use vlm_core::{Generation, Image, Request, VisionLanguageModel};

use args::{Cli, Command, Common};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(verbose(&cli.command));
    let result = match &cli.command {
        Command::Compare(args) => compare::run(args),
        _ => run(cli).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `-v` was given (the generating commands and `quantize` take it).
fn verbose(command: &Command) -> bool {
    match command {
        Command::Quantize { verbose, .. } => *verbose,
        Command::Compare(args) => args.verbose,
        other => other.common().is_some_and(|c| c.verbose),
    }
}

fn run(cli: Cli) -> vlm_core::Result<()> {
    let Some(common) = cli.command.common() else {
        return convert(&cli.command);
    };
    let options = common.generation_options()?;
    let load_started = std::time::Instant::now();
    let model = vlm_core::load(&common.model, &common.load_options()?)?;
    let load_time = load_started.elapsed();
    let images = common
        .image
        .iter()
        .map(Image::open)
        .collect::<Result<Vec<_>, _>>()?;
    if let Command::Locate { what, draw, .. } = &cli.command {
        let image = single_image(&images)?;
        return locate::run(&*model, image, what, draw.as_deref(), common.json, &options);
    }
    let stream = !common.json && !common.no_stream;
    let mut stdout = std::io::stdout();
    let mut print_piece = |piece: &str| {
        if stream {
            // A closed pipe (e.g. `| head`) is not an error worth reporting mid-stream.
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    };
    let generation = match &cli.command {
        Command::Describe { .. } => {
            let image = single_image(&images)?;
            model.generate_stream(&model.describe_request(image, &options)?, &mut print_piece)?
        }
        Command::Ask { question, .. } => {
            let image = single_image(&images)?;
            model.generate_stream(
                &model.ask_request(image, question, &options)?,
                &mut print_piece,
            )?
        }
        Command::Relate { instruction, .. } => {
            model.relate_with(&images, instruction.as_deref(), &options, &mut print_piece)?
        }
        Command::Generate { raw_prompt, .. } => model.generate_stream(
            &Request::raw(images, raw_prompt.clone(), options),
            &mut print_piece,
        )?,
        Command::ConvertMinigpt4 { .. }
        | Command::Quantize { .. }
        | Command::Compare(_)
        | Command::Devices { .. }
        | Command::Locate { .. } => {
            unreachable!("conversions and devices have no common options; locate returned above")
        }
    };
    report(&*model, &generation, common, stream, load_time);
    Ok(())
}

fn convert(command: &Command) -> vlm_core::Result<()> {
    if let Command::Devices { json } = command {
        devices::print(*json);
    }
    if let Command::Quantize {
        model,
        output,
        quant,
        vision_quant,
        dtype,
        revision,
        ..
    } = command
    {
        let options = vlm_core::model::LoadOptions {
            device: vlm_core::DeviceChoice::Cpu,
            dtype: vlm_core::DTypeChoice::parse(dtype)?,
            quantization: vlm_core::Quantization::parse(quant)?,
            vision_quantization: vision_quant
                .as_deref()
                .map(vlm_core::Quantization::parse)
                .transpose()?,
            revision: revision.clone(),
            ..Default::default()
        };
        let report = vlm_core::save_quantized(model, output, &options)?;
        println!(
            "wrote {}: {} quantized and {} float tensors, {:.2} GB of weights ({:.2} GB file); load it with --model {}",
            output.display(),
            report.info.quantized_tensors,
            report.info.float_tensors,
            report.info.weight_bytes as f64 / 1e9,
            report.file_bytes as f64 / 1e9,
            output.display()
        );
    }
    if let Command::ConvertMinigpt4 { model, output } = command {
        let output = output
            .clone()
            .unwrap_or_else(|| model.join("minigpt4.safetensors"));
        let n = vlm_core::minigpt4::convert_to_safetensors(model, &output)?;
        println!(
            "wrote {n} tensors to {}; set \"weights\": \"{}\" in {}/config.json (the .pth entries can then go)",
            output.display(),
            output.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            model.display()
        );
    }
    Ok(())
}

fn single_image(images: &[Image]) -> vlm_core::Result<&Image> {
    match images {
        [one] => Ok(one),
        [] => Err(vlm_core::Error::NoImages {
            what: "this command (pass --image PATH)",
        }),
        more => Err(vlm_core::Error::TooManyImages {
            given: more.len(),
            max: 1,
        }),
    }
}

fn report(
    model: &dyn VisionLanguageModel,
    g: &Generation,
    common: &Common,
    streamed: bool,
    load_time: std::time::Duration,
) {
    if common.json {
        // The names and units of the Python API (Generation, Timings, Model.info).
        let t = &g.timings;
        let info = model.info();
        let json = serde_json::json!({
            "text": g.text,
            "token_ids": g.token_ids,
            "prompt_tokens": g.prompt_tokens,
            "finish_reason": g.finish_reason.as_str(),
            "stop_string": g.finish_reason.stop_string(),
            "timings": {
                "preprocess": t.preprocess.as_secs_f64(),
                "image_encode": t.image_encode.as_secs_f64(),
                "prefill": t.prefill.as_secs_f64(),
                "decode": t.decode.as_secs_f64(),
                "decode_steps": t.decode_steps,
                "time_to_first_token": (t.preprocess + t.image_encode + t.prefill).as_secs_f64(),
                "decode_tokens_per_second": t.decode_tokens_per_second(),
                "image_cache_hits": t.image_cache_hits,
            },
            "model": info.model_type,
            "family": info.family,
            "device": info.device,
            "dtype": info.dtype,
            "quantization": info.quantization.as_str(),
            "load_time": load_time.as_secs_f64(),
        });
        println!("{json}");
    } else if streamed {
        println!();
    } else {
        println!("{}", g.text);
    }
    if common.verbose {
        let t = &g.timings;
        eprintln!(
            "[{} prompt tokens, {} generated; preprocess {:.0} ms, image {:.0} ms, prefill {:.0} ms, decode {:.1} tok/s]",
            g.prompt_tokens,
            g.token_ids.len(),
            t.preprocess.as_secs_f64() * 1e3,
            t.image_encode.as_secs_f64() * 1e3,
            t.prefill.as_secs_f64() * 1e3,
            t.decode_tokens_per_second()
        );
    }
}
