//! Plots: both files written, atomically, with the text rendered by the
//! embedded font, and robust to NaN from a diverged run.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use normlab::train::metrics::EpochMetrics;
use normlab_cli::plot::{plot_curves, plot_heatmap, plot_lines, Series, PLOT_SIZE};

fn metrics(epochs: usize) -> Vec<EpochMetrics> {
    (1..=epochs)
        .map(|e| {
            let t = e as f64;
            EpochMetrics {
                epoch: e,
                train_loss: 1.6 / t.sqrt(),
                train_acc: 0.9 - 0.3 / t,
                val_loss: 1.4 / t.sqrt() + 0.05,
                val_acc: 0.88 - 0.3 / t,
                train_seconds: 10.0,
                eval_seconds: 1.0,
                lr: None,
            }
        })
        .collect()
}

fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{stem}.svg")), dir.join(format!("{stem}.png")))
}

/// Opens the PNG and checks its size and that it is a real picture (many
/// colours, antialiased text and lines); returns it for further checks.
fn check_png(path: &Path) -> image::RgbImage {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), PLOT_SIZE, "{}", path.display());
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 20, "{}: only {} distinct colours", path.display(), colours.len());
    img
}

/// Near-black pixels in a rectangle: text is drawn in black, so these show
/// the font rendered.
fn dark_pixels(img: &image::RgbImage, x: std::ops::Range<u32>, y: std::ops::Range<u32>) -> usize {
    let mut n = 0;
    for yy in y {
        for xx in x.clone() {
            let p = img.get_pixel(xx, yy).0;
            if p.iter().all(|&c| c < 80) {
                n += 1;
            }
        }
    }
    n
}

fn tmp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

#[test]
fn curves_write_svg_and_png_with_text() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = paths(dir.path(), "curves");
    plot_curves(&metrics(10), "BN LeNet on Fashion-MNIST", &svg, &png).unwrap();

    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(100)]);
    for needle in ["BN LeNet on Fashion-MNIST", "train loss", "val loss", "train acc", "val acc", "epoch"] {
        assert!(text.contains(needle), "SVG lacks {needle:?}");
    }

    let img = check_png(&png);
    let (w, _) = PLOT_SIZE;
    // The title, centred in the top band.
    let title = dark_pixels(&img, w / 4..3 * w / 4, 0..40);
    assert!(title > 100, "only {title} dark pixels in the title band: no text?");
    // The legend, right of the plot area.
    let legend = dark_pixels(&img, w - 160..w, 40..150);
    assert!(legend > 100, "only {legend} dark pixels in the legend: no text?");
    assert!(tmp_files(dir.path()).is_empty(), "{:?}", tmp_files(dir.path()));
}

#[test]
fn curves_survive_nan_and_a_single_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = metrics(5);
    m[2].train_loss = f64::NAN;
    m[3].val_loss = f64::INFINITY;
    m[4].train_loss = f64::NAN;
    m[4].val_loss = f64::NAN;
    let (svg, png) = paths(dir.path(), "diverged");
    plot_curves(&m, "diverged", &svg, &png).unwrap();
    assert!(svg.is_file());
    check_png(&png);

    let (svg, png) = paths(dir.path(), "one");
    plot_curves(&metrics(1), "one epoch", &svg, &png).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("one epoch"));
    check_png(&png);

    // Everything NaN, or nothing at all: still an (empty) plot.
    let mut all_nan = metrics(3);
    for e in &mut all_nan {
        e.train_loss = f64::NAN;
        e.train_acc = f64::NAN;
        e.val_loss = f64::NAN;
        e.val_acc = f64::NAN;
    }
    let (svg, png) = paths(dir.path(), "nan");
    plot_curves(&all_nan, "all NaN", &svg, &png).unwrap();
    check_png(&png);
    let (svg, png) = paths(dir.path(), "empty");
    plot_curves(&[], "no epochs", &svg, &png).unwrap();
    check_png(&png);
    assert!(tmp_files(dir.path()).is_empty(), "{:?}", tmp_files(dir.path()));
}

#[test]
fn plots_replace_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = paths(dir.path(), "curves");
    std::fs::write(&svg, "old").unwrap();
    std::fs::write(&png, "old").unwrap();
    plot_curves(&metrics(3), "again", &svg, &png).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("again"));
    check_png(&png);
    assert!(tmp_files(dir.path()).is_empty());
}

#[test]
fn lines_with_log_x_and_many_series() {
    let dir = tempfile::tempdir().unwrap();
    let lrs = [0.001, 0.01, 0.1, 1.0, 10.0];
    let series = vec![
        Series::new("BN LeNet", lrs.iter().map(|&lr: &f64| (lr, 0.9 - lr.log10().abs() * 0.1)).collect()),
        Series::new("LeNet", lrs.iter().map(|&lr: &f64| (lr, 0.8 - lr.log10().abs() * 0.15)).collect()),
        // a diverged run and a point that cannot go on a log axis
        Series::new("LeNet no init", vec![(0.0, 0.5), (0.01, 0.6), (0.1, f64::NAN), (1.0, 0.1)]),
    ];
    let (svg, png) = paths(dir.path(), "sweep");
    plot_lines(&series, "accuracy vs learning rate", "learning rate", "val accuracy", true, &svg, &png).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    for needle in ["accuracy vs learning rate", "learning rate", "val accuracy", "BN LeNet", "LeNet no init"] {
        assert!(text.contains(needle), "SVG lacks {needle:?}");
    }
    let img = check_png(&png);
    // The series have distinct colours: count pixels of the first three palette colours.
    for colour in [[31u8, 119, 180], [255, 127, 14], [44, 160, 44]] {
        let n = img.pixels().filter(|p| p.0 == colour).count();
        assert!(n > 20, "colour {colour:?} drawn in only {n} pixels");
    }

    // More series than colours, linear axes, and an empty series.
    let many: Vec<Series> = (0..13)
        .map(|i| Series::new(format!("lr {i}"), (1..=8).map(|e| (e as f64, (e * (i + 1)) as f64 * 0.01)).collect()))
        .chain([Series::new("nothing", vec![])])
        .collect();
    let (svg, png) = paths(dir.path(), "many");
    plot_lines(&many, "many", "epoch", "val acc", false, &svg, &png).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().contains("lr 12"));
    check_png(&png);

    let (svg, png) = paths(dir.path(), "none");
    plot_lines(&[], "no series", "x", "y", true, &svg, &png).unwrap();
    check_png(&png);
    assert!(tmp_files(dir.path()).is_empty(), "{:?}", tmp_files(dir.path()));
}

#[test]
fn heatmap_has_colour_bar_labels_and_grey_nan() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = ["conv1", "bn1", "conv2", "bn2", "fc1"].iter().map(|s| s.to_string()).collect();
    let cols: Vec<String> = (0..20).map(|s| format!("{}", s * 100)).collect();
    let mut values: Vec<Vec<f64>> =
        (0..rows.len()).map(|r| (0..cols.len()).map(|c| (r as f64 + 1.0) * (c as f64 * 0.3).sin()).collect()).collect();
    values[2][5] = f64::NAN;
    values[3][7] = f64::INFINITY;
    let (svg, png) = paths(dir.path(), "heat");
    plot_heatmap(&values, &rows, &cols, "activation std by layer", &svg, &png).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    for needle in ["activation std by layer", "conv1", "bn2", "fc1"] {
        assert!(text.contains(needle), "SVG lacks {needle:?}");
    }
    let img = check_png(&png);
    let grey = img.pixels().filter(|p| p.0 == [160, 160, 160]).count();
    assert!(grey > 100, "the NaN cells are not grey ({grey} grey pixels)");
    let (w, _) = PLOT_SIZE;
    assert!(dark_pixels(&img, w / 4..3 * w / 4, 0..40) > 100, "no title text");
    // The colour bar's ends, right of the map: viridis yellow and dark purple.
    let bar = |f: fn([u8; 3]) -> bool| img.enumerate_pixels().filter(|(x, _, p)| *x > w - 120 && f(p.0)).count();
    assert!(bar(|[r, g, b]| r > 200 && g > 200 && b < 90) > 50, "no yellow end on the colour bar");
    assert!(bar(|[r, g, b]| r < 90 && g < 30 && b > 70) > 50, "no purple end on the colour bar");

    // Degenerate inputs: nothing finite, constant values, no labels.
    let (svg, png) = paths(dir.path(), "flat");
    plot_heatmap(&[vec![f64::NAN, 2.0], vec![2.0]], &[], &[], "flat", &svg, &png).unwrap();
    check_png(&png);
    let (svg, png) = paths(dir.path(), "empty");
    plot_heatmap(&[], &[], &[], "empty", &svg, &png).unwrap();
    check_png(&png);
    assert!(tmp_files(dir.path()).is_empty(), "{:?}", tmp_files(dir.path()));
}

#[test]
fn write_failure_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir");
    let (svg, png) = paths(&missing, "curves");
    let err = plot_curves(&metrics(2), "t", &svg, &png).unwrap_err();
    assert!(matches!(err, normlab::Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("curves.svg"), "{err}");
}

/// The numbers written on an SVG's axes (the `<text>` elements that parse as numbers).
fn axis_numbers(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>').and_then(|(_, rest)| rest.split_once("</text>")).map(|(v, _)| v.trim().to_string())
        })
        .filter(|v| v.parse::<f64>().is_ok())
        .collect()
}

/// A 2-epoch run's axis shows epochs 1 and 2, not 1.1, 1.2, ...; a log axis
/// of batch sizes labels each of them (not only 100-500).
#[test]
fn epoch_axes_have_whole_numbers_and_batch_axes_every_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = paths(dir.path(), "epochs");
    let s = Series::new("a", vec![(1.0, 0.5), (2.0, 0.7)]);
    plot_lines(&[s], "two epochs", "epoch", "acc", false, &svg, &png).unwrap();
    let nums = axis_numbers(&std::fs::read_to_string(&svg).unwrap());
    for n in &nums {
        // y labels are accuracies between 0.5 and 0.7; every x label is a whole number
        let v: f64 = n.parse().unwrap();
        assert!(v.fract() == 0.0 || (0.4..0.8).contains(&v), "fractional epoch label {n} in {nums:?}");
    }
    assert!(nums.contains(&"1".to_string()) && nums.contains(&"2".to_string()), "{nums:?}");
    let (svg, png) = paths(dir.path(), "batches");
    let batches = [16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
    let s = Series::new("BN", batches.iter().map(|&b| (b, 0.8)).collect());
    plot_lines(&[s], "batch", "batch size", "acc", true, &svg, &png).unwrap();
    let nums = axis_numbers(&std::fs::read_to_string(&svg).unwrap());
    for b in ["16", "32", "64", "128", "256", "512"] {
        assert!(nums.contains(&b.to_string()), "batch {b} labelled: {nums:?}");
    }
}
