//! What the page shows, gathered from the state folder into one [`View`] (served as
//! `/api/view.json`) and rendered into one self-contained HTML page: inline CSS and script, no
//! external address, sized for a phone. The words come from [`crate::status_view`], so the
//! page and `roost status` say the same thing. Reads only.

use crate::component::ConfigFile;
use crate::connect::report::ConnectReport;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;

use super::files::{self, Recording, RecordingName};
use crate::status::StatusDoc;
use crate::status_view;

/// How many recordings the page lists.
pub const RECENT_RECORDINGS: usize = 20;

/// Everything on the page.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct View {
    /// The deployment's name (`metadata.name`), when known.
    pub deployment: Option<String>,
    /// The device id the connector sends as (`spec.connect.deviceId`), when it sends.
    pub device_id: Option<String>,
    /// The first line of `roost status`: is it recording, and if not why.
    pub headline: String,
    /// The overall status word (`Running`, `Error` ...), `None` before roost ever ran.
    pub status: Option<String>,
    /// When status.json was written.
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub updated_at: Option<Timestamp>,
    /// The recorder's figures as (label, value).
    pub figures: Vec<Figure>,
    /// Every component.
    pub components: Vec<Component>,
    /// Every error, with its code and what to do.
    pub errors: Vec<crate::status::ErrorEntry>,
    /// Every warning (what does not stop anything but should be known), as `roost status`
    /// lists them.
    pub warnings: Vec<crate::status::ErrorEntry>,
    /// The last finished recording's name under `recordings/`.
    pub last_recording: Option<String>,
    /// The newest recordings, newest first.
    pub recordings: Vec<Recording>,
}

/// One recorder figure.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Figure {
    /// E.g. `free space`.
    pub label: String,
    /// E.g. `12.3 GB, about 40 days at the last day's rate`.
    pub value: String,
}

/// One component's line.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Component {
    /// Its name in the deployment.
    pub name: String,
    /// `Running`, `Pending`, `Error` or `Stopped`.
    pub state: String,
    /// The reason code, when there is one.
    pub reason: Option<String>,
    /// The state and reason in plain words.
    pub in_words: String,
}

/// The storage folder of the recorder's configuration in `state_dir`, if there is one.
pub fn storage_of(state_dir: &Path) -> Option<PathBuf> {
    crate::recorder::RecordConfig::read(state_dir).map(|c| c.storage_path(state_dir))
}

/// Reads status.json, the recorder's configuration and metadata.db in `state_dir`.
pub fn gather(state_dir: &Path, now: Timestamp) -> View {
    let storage = storage_of(state_dir);
    let recordings = storage
        .as_deref()
        .map(|s| files::recent(s, RECENT_RECORDINGS))
        .unwrap_or_default();
    let doc =
        crate::status::read(&crate::state_dir::StateDir::new(state_dir.into()).device_status());
    match doc {
        // Written by this or an older roost: redacted again, whoever wrote it.
        Ok(doc) => from_doc(
            &crate::redact::typed(&doc),
            state_dir,
            storage.as_deref(),
            recordings,
            now,
        ),
        Err(e) => View {
            deployment: None,
            device_id: None,
            warnings: Vec::new(),
            headline: format!("No status: {e}. Is roost running with this state folder?"),
            status: None,
            updated_at: None,
            figures: Vec::new(),
            components: Vec::new(),
            errors: Vec::new(),
            last_recording: recordings.first().map(|r| r.name.clone()),
            recordings,
        },
    }
}

fn from_doc(
    doc: &StatusDoc,
    state_dir: &Path,
    storage: Option<&Path>,
    recordings: Vec<Recording>,
    now: Timestamp,
) -> View {
    // Roost gone or a status out of date shows as Unknown with its reason, never green.
    let (_, doc) = &crate::status_seen::look(doc, state_dir, now);
    let facts = status_view::gather(doc, state_dir, now);
    // The recorder's own word first (it may be newer than metadata.db) while its file is
    // still there, else the newest row: never the picture of a file keep rules deleted.
    let last_file = (doc.components.iter())
        .filter(|c| c.name == crate::spec::recorder::RECORDER_COMPONENT)
        .filter_map(|c| c.output_as::<crate::recorder::RecorderOutput>()?.last_file)
        .find(|f| f.is_file());
    // Times in the deployment's time zone, as `roost status` says them.
    let tz = facts.time_zone.clone().unwrap_or(jiff::tz::TimeZone::UTC);
    let recordings: Vec<Recording> = recordings
        .into_iter()
        .map(|mut r| {
            if let Some(t) = crate::storage::parse_db_datetime(&r.datetime) {
                r.datetime = t
                    .to_zoned(tz.clone())
                    .strftime("%a %-d %b %H:%M:%S %Z")
                    .to_string();
            }
            r
        })
        .collect();
    let last_recording = match (last_file, storage) {
        (Some(f), Some(s)) => RecordingName::of(&f, &s.join(crate::storage::RECORDINGS_DIR))
            .map(|n| n.as_str().to_string()),
        _ => None,
    }
    .or_else(|| recordings.first().map(|r| r.name.clone()));
    View {
        deployment: doc.deployment.clone(),
        device_id: (doc.output_as::<ConnectReport>(crate::connect::messages::CONNECT_COMPONENT))
            .map(|o| o.device_id)
            .filter(|id| !id.is_empty()),
        warnings: status_view::warnings(doc),
        headline: status_view::headline(doc, &facts, now),
        status: Some(format!("{:?}", doc.status)),
        updated_at: Some(doc.updated_at),
        figures: status_view::recorder_figures(doc, &facts, now)
            .unwrap_or_default()
            .into_iter()
            .map(|(label, value)| (label.to_string(), value))
            .chain(status_view::curator_figures(doc))
            // `roost run --dir`: each deployment's status on its own line.
            .chain(doc.deployments.iter().map(|d| {
                let name = d
                    .deployment
                    .clone()
                    .unwrap_or_else(|| "(refused file)".into());
                (
                    format!("deployment {name}"),
                    format!("{:?} ({:?})", d.status, d.phase),
                )
            }))
            .map(|(label, value)| Figure { label, value })
            .collect(),
        components: doc
            .components
            .iter()
            .map(|c| Component {
                name: match &c.deployment {
                    Some(d) => format!("{d}/{}", c.name),
                    None => c.name.clone(),
                },
                state: format!("{:?}", c.status),
                reason: c.reason.map(|r| format!("{r:?}")),
                in_words: status_view::component_in_words(c).to_string(),
            })
            .collect(),
        errors: doc.errors.clone(),
        last_recording,
        recordings,
    }
}

/// `text` safe inside HTML text and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `name` as a query value (what JavaScript's `encodeURIComponent` gives, `/` kept readable).
pub fn query_value(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The page, filled with `view` so it is useful before (or without) its script.
pub fn page(view: &View) -> String {
    let mut figures = String::new();
    for f in &view.figures {
        let _ = write!(
            figures,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&f.label),
            escape(&f.value)
        );
    }
    let mut components = String::new();
    for c in &view.components {
        let _ = write!(
            components,
            "<li class=\"{}\"><b>{}</b> {}</li>",
            escape(&c.state),
            escape(&c.name),
            escape(&c.in_words)
        );
    }
    let mut errors = String::new();
    for e in &view.errors {
        let _ = write!(
            errors,
            "<li><b>{}</b> {}{}<br><i>What to do:</i> {}</li>",
            escape(&e.code),
            e.component
                .as_deref()
                .map(|c| format!("[{}] ", escape(c)))
                .unwrap_or_default(),
            escape(&e.message),
            escape(&e.action)
        );
    }
    let mut warnings = String::new();
    for w in &view.warnings {
        let _ = write!(
            warnings,
            "<li><b>{}</b> {}{}<br><i>What to do:</i> {}</li>",
            escape(&w.code),
            w.component
                .as_deref()
                .map(|c| format!("[{}] ", escape(c)))
                .unwrap_or_default(),
            escape(&w.message),
            escape(&w.action)
        );
    }
    let who = match (&view.deployment, &view.device_id) {
        (Some(d), Some(id)) => format!("{} on {}", escape(d), escape(id)),
        (Some(d), None) => escape(d),
        (None, Some(id)) => escape(id),
        (None, None) => "roost".to_string(),
    };
    let mut recordings = String::new();
    for r in &view.recordings {
        let _ = write!(
            recordings,
            "<li><a href=\"/spectrogram.png?file={}\">{}</a> {}</li>",
            escape(&query_value(&r.name)),
            escape(&r.name),
            escape(&r.datetime)
        );
    }
    let spectrogram = match &view.last_recording {
        Some(name) => format!(
            "<img id=\"spec\" alt=\"spectrogram of the last recording\" onload=\"this.dataset.size=this.naturalWidth+'x'+this.naturalHeight\" onerror=\"gone(this)\" src=\"/spectrogram.png?file={}\">",
            escape(&query_value(name))
        ),
        None => "<img id=\"spec\" alt=\"no recording yet\" onload=\"this.dataset.size=this.naturalWidth+'x'+this.naturalHeight\" onerror=\"gone(this)\" hidden>".to_string(),
    };
    PAGE.replace(
        "{STATUS}",
        &escape(view.status.as_deref().unwrap_or("Unknown")),
    )
    .replace("{HEADLINE}", &escape(&view.headline))
    .replace("{FIGURES}", &figures)
    .replace("{COMPONENTS}", &components)
    .replace("{ERRORS}", &errors)
    .replace("{WARNINGS}", &warnings)
    .replace("{WHO}", &who)
    .replace("{SPECTROGRAM}", &spectrogram)
    .replace("{RECORDINGS}", &recordings)
}

/// The page's frame; the script fetches `/api/view.json` every 10 s and redraws the sections.
const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{WHO} - roost</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;padding:1em;max-width:40em;background:#fafafa;color:#222;overflow-wrap:anywhere}
#who{color:#555;margin:0 0 .4em}
#headline{font-size:1.6em;font-weight:bold;padding:.6em;border-radius:.3em;background:#ddd}
#headline.Running{background:#cfc}#headline.Error,#headline.Unknown{background:#fcc}#headline.Pending{background:#ffc}
td,th{vertical-align:top}
h2{font-size:1.1em;margin:1.2em 0 .3em}table{border-collapse:collapse}th{text-align:left;padding-right:1em;font-weight:normal;color:#555}
ul{padding-left:1.2em}li{margin:.3em 0}li.Error{color:#a00}li.Pending{color:#860}
img{width:100%;height:14em;background:#000}#age{color:#777;font-size:.8em}
</style></head><body>
<p id="who">{WHO}</p>
<div id="headline" class="{STATUS}">{HEADLINE}</div>
<p id="age">Updates every 10 s.</p>
<h2>Recorder</h2><table id="figures">{FIGURES}</table>
<h2>Problems</h2><ul id="errors">{ERRORS}</ul>
<h2>Warnings</h2><ul id="warnings">{WARNINGS}</ul>
<h2>Components</h2><ul id="components">{COMPONENTS}</ul>
<h2>Last recording</h2>{SPECTROGRAM}
<h2>Recent recordings</h2><ul id="recordings">{RECORDINGS}</ul>
<script>
function esc(s){return String(s==null?'':s).replace(/[&<>"']/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c]));}
function q(n){return encodeURIComponent(n).replace(/%2F/g,'/');}
function gone(img){if(!img.src.endsWith('/spectrogram.png')){img.src='/spectrogram.png';}else{img.hidden=true;}}
function draw(v){
 const h=document.getElementById('headline');h.textContent=v.headline;h.className=v.status||'Unknown';
 document.getElementById('figures').innerHTML=v.figures.map(f=>'<tr><th>'+esc(f.label)+'</th><td>'+esc(f.value)+'</td></tr>').join('');
 const entry=e=>'<li><b>'+esc(e.code)+'</b> '+(e.component?'['+esc(e.component)+'] ':'')+esc(e.message)+'<br><i>What to do:</i> '+esc(e.action)+'</li>';
 document.getElementById('errors').innerHTML=v.errors.map(entry).join('');
 document.getElementById('warnings').innerHTML=(v.warnings||[]).map(entry).join('');
 document.getElementById('who').textContent=[v.deployment,v.deviceId].filter(x=>x).join(' on ')||'roost';
 document.getElementById('components').innerHTML=v.components.map(c=>'<li class="'+esc(c.state)+'"><b>'+esc(c.name)+'</b> '+esc(c.inWords)+'</li>').join('');
 document.getElementById('recordings').innerHTML=v.recordings.map(r=>'<li><a href="/spectrogram.png?file='+esc(q(r.name))+'">'+esc(r.name)+'</a> '+esc(r.datetime)+'</li>').join('');
 const img=document.getElementById('spec');
 if(v.lastRecording){const src='/spectrogram.png?file='+q(v.lastRecording);if(img.getAttribute('src')!==src){img.src=src;}img.hidden=false;}else{img.hidden=true;}
 document.getElementById('age').textContent='Checked '+new Date().toLocaleTimeString()+'; updates every 10 s.';
}
function tick(){fetch('/api/view.json',{cache:'no-store'}).then(r=>r.json()).then(draw).catch(()=>{document.getElementById('age').textContent='Cannot reach the device; trying again in 10 s.';});}
setInterval(tick,10000);
// For a phone: whether the page fits its width (nothing scrolls sideways); a test reads it.
addEventListener('load',()=>{document.body.dataset.fits=document.documentElement.scrollWidth<=innerWidth;});
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows_and_names_no_other_host() {
        let view = View {
            deployment: Some("meadow <b>".into()),
            device_id: Some("pi-7".into()),
            warnings: vec![crate::status::ErrorEntry::new(
                &crate::errors::CLOCK_NOT_SYNCHRONIZED,
                Some("recorder"),
                "the clock <is> not synchronised",
            )],
            headline: "NOT RECORDING: <script>x</script>.".into(),
            status: Some("Error".into()),
            updated_at: None,
            figures: vec![Figure {
                label: "free space".into(),
                value: "1 GB".into(),
            }],
            components: Vec::new(),
            errors: Vec::new(),
            last_recording: Some("2026/a b.wav".into()),
            recordings: Vec::new(),
        };
        let html = page(&view);
        assert!(html.contains("NOT RECORDING: &lt;script&gt;x&lt;/script&gt;."));
        assert!(html.contains("src=\"/spectrogram.png?file=2026/a%20b.wav\""));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("{HEADLINE}") && !html.contains("{SPECTROGRAM}"));
        assert!(
            html.contains("<p id=\"who\">meadow &lt;b&gt; on pi-7</p>"),
            "{html}"
        );
        assert!(html.contains("<b>DEP_E316</b> [recorder] the clock &lt;is&gt; not synchronised"));
        assert!(!html.contains("{WARNINGS}") && !html.contains("{WHO}"));
    }
}
