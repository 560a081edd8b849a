//! report.html in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs) loads the page from a file with the network off, without errors, and the charts are
//! not blank. Ignored by a plain `cargo test`, since it needs Chromium; `.ci/run` runs it with
//! `--ignored`.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The browser binary: `KAD_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> String {
    if let Ok(path) = std::env::var("KAD_CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_owned();
        }
    }
    panic!("no Chromium found: install Debian's chromium (.ci/run does) or set KAD_CHROMIUM");
}

/// Runs Chromium headless on `page` with `args`, bounded by a deadline; returns stdout, stderr.
fn headless(page: &Path, args: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            // Nothing may come from the network: any attempt fails the load.
            "--proxy-server=127.0.0.1:9",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs Chromium; .ci/run runs it with --ignored"]
fn the_report_page_loads_offline_without_errors_and_its_charts_are_drawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("report.html");
    let status = Command::new(env!("CARGO_BIN_EXE_testbed-check"))
        .arg("--logs")
        .arg(util::fixture("churn-near-end"))
        .arg("--html")
        .arg(&page)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("testbed-check runs");
    assert_eq!(status.code(), Some(0));

    // The DOM as the browser built it: the verdict and three inline charts.
    let (dom, stderr) = headless(&page, &["--dump-dom"]);
    assert!(
        dom.contains("PASS: 3 / 3 properties hold over 6 nodes"),
        "{dom}"
    );
    assert_eq!(dom.matches("<svg").count(), 3, "three charts");
    for error in ["Failed to load resource", "Uncaught", "ERR_"] {
        assert!(!stderr.contains(error), "{error} while loading:\n{stderr}");
    }

    // A screenshot: the plot area holds the convergence lines' blue, not just white.
    let shot = dir.path().join("shot.png");
    headless(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,1400",
            "--hide-scrollbars",
        ],
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("screenshot written"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    let blue = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| {
            px[0].abs_diff(31) < 40 && px[1].abs_diff(119) < 40 && px[2].abs_diff(180) < 40
        })
        .count();
    assert!(blue > 500, "only {blue} blue pixels: the charts look blank");
    if let Ok(keep) = std::env::var("KAD_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("screenshot kept");
    }
}
