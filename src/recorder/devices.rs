//! The audio inputs as `roost devices` and `roost init` show them: ALSA's PCM names (what
//! `arecord -L` lists, and what `spec.recorder.device` takes), what each says it is, and what it
//! can capture (channels, sample formats, which of the usual rates).

use serde::Serialize;

use super::capture::DeviceError;

/// Sample rates a field recording commonly uses, Hz: speech and birds to bats.
pub const USUAL_RATES_HZ: [u32; 11] = [
    8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000, 192000, 256000, 384000,
];

/// One audio input.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputDevice {
    /// The name `spec.recorder.device` takes (`default`, `hw:CARD=Device,DEV=0`, ...).
    pub name: String,
    /// What ALSA says it is (its description's first line).
    pub description: String,
    /// Channel counts it offers, lowest first.
    pub channels: Vec<u16>,
    /// Sample formats it offers, as `spec.recorder.sampleFormat` names them (`i16`, `i24`,
    /// `f32`), in that order; others it may offer are not listed.
    pub sample_formats: Vec<String>,
    /// Which of [`USUAL_RATES_HZ`] it accepts, Hz.
    pub sample_rates_hz: Vec<u32>,
    /// Why its capabilities are unknown (busy, refused), when they are.
    pub error: Option<String>,
}

/// Every audio input ALSA knows, `default` first when there is one.
///
/// # Errors
/// ALSA cannot list its devices at all.
pub fn list_inputs() -> Result<Vec<InputDevice>, DeviceError> {
    use cpal::traits::HostTrait;
    let host = cpal::default_host();
    let devices = host
        .input_devices()
        .map_err(|e| DeviceError::unavailable(format!("cannot list audio devices: {e}")))?;
    let mut out: Vec<InputDevice> = devices.map(|d| describe(&d)).collect();
    out.retain(|d| !d.name.is_empty());
    out.sort_by_key(|d| (d.name != "default", d.name.clone()));
    out.dedup_by(|a, b| a.name == b.name);
    Ok(out)
}

fn describe(d: &cpal::Device) -> InputDevice {
    use cpal::traits::DeviceTrait;
    let name = d.id().map(|id| id.id().to_string()).unwrap_or_default();
    let description = d
        .description()
        .map(|x| x.name().lines().next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let mut dev = InputDevice {
        name,
        description,
        channels: Vec::new(),
        sample_formats: Vec::new(),
        sample_rates_hz: Vec::new(),
        error: None,
    };
    match d.supported_input_configs() {
        Ok(configs) => {
            for c in configs {
                dev.channels.push(c.channels());
                if let Some(f) = format_name(c.sample_format()) {
                    dev.sample_formats.push(f.to_string());
                }
                let rates = USUAL_RATES_HZ.iter().filter(|r| c.contains_rate(**r));
                dev.sample_rates_hz.extend(rates);
            }
        }
        Err(e) => dev.error = Some(e.to_string()),
    }
    dev.channels.sort_unstable();
    dev.channels.dedup();
    dev.sample_formats
        .sort_by_key(|f| ["i16", "i24", "f32"].iter().position(|x| x == f));
    dev.sample_formats.dedup();
    dev.sample_rates_hz.sort_unstable();
    dev.sample_rates_hz.dedup();
    dev
}

fn format_name(f: cpal::SampleFormat) -> Option<&'static str> {
    match f {
        cpal::SampleFormat::I16 => Some("i16"),
        cpal::SampleFormat::I24 => Some("i24"),
        cpal::SampleFormat::F32 => Some("f32"),
        _ => None,
    }
}

/// The table `roost devices` prints: one device a line, what it captures beside it.
pub fn render(devices: &[InputDevice]) -> String {
    use std::fmt::Write;
    if devices.is_empty() {
        return "No audio input found. Plug in the microphone (a USB one shows up at once; \
                a HAT needs its overlay in /boot/firmware/config.txt and a reboot), then run \
                `roost devices` again.\n"
            .into();
    }
    let width = devices
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:width$}  CAPTURES\n", "NAME");
    for d in devices {
        let captures = match &d.error {
            Some(e) => format!("cannot tell ({e})"),
            None if d.sample_rates_hz.is_empty() => "none of the usual rates".into(),
            None => format!(
                "{} channel(s), {}, {} Hz",
                spans(&d.channels),
                d.sample_formats.join("/"),
                join(&d.sample_rates_hz)
            ),
        };
        let _ = writeln!(out, "{:width$}  {captures}", d.name);
        if !d.description.is_empty() {
            let _ = writeln!(out, "{:width$}  {}", "", d.description);
        }
    }
    out.push_str(
        "\nPut the NAME into spec.recorder.device (or give it to `roost init --device`).\n",
    );
    out
}

/// `1 2` or `1-64`: runs of consecutive numbers as spans.
fn spans(xs: &[u16]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < xs.len() {
        let mut j = i;
        while j + 1 < xs.len() && xs[j + 1] == xs[j] + 1 {
            j += 1;
        }
        out.push(if j > i + 1 {
            format!("{}-{}", xs[i], xs[j])
        } else {
            xs[i..=j]
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        });
        i = j + 1;
    }
    out.join(" ")
}

fn join<T: ToString>(xs: &[T]) -> String {
    xs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mic() -> InputDevice {
        InputDevice {
            name: "hw:CARD=Mic,DEV=0".into(),
            description: "USB Ultrasonic Microphone".into(),
            channels: vec![1],
            sample_formats: vec!["i16".into()],
            sample_rates_hz: vec![192000, 384000],
            error: None,
        }
    }

    #[test]
    fn the_table_names_each_input_and_what_it_captures() {
        let text = render(&[mic()]);
        assert!(
            text.contains("hw:CARD=Mic,DEV=0  1 channel(s), i16, 192000 384000 Hz"),
            "{text}"
        );
        assert!(text.contains("USB Ultrasonic Microphone"), "{text}");
        assert!(text.contains("spec.recorder.device"), "{text}");
        assert!(render(&[]).starts_with("No audio input found"));
        assert_eq!(spans(&[1, 2]), "1 2");
        assert_eq!(spans(&(1..=64).collect::<Vec<_>>()), "1-64");
        assert_eq!(spans(&[1, 2, 4, 6, 7, 8]), "1 2 4 6-8");
    }
}
