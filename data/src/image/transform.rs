//! Per-image transforms into normalised CHW `f32`: training's random resized crop and
//! horizontal flip, evaluation's centre crop, or the image as it is.

use super::RawImage;
use crate::{Error, Result};
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Pixel, Rgb};
use rand::Rng;

/// Per-channel mean and standard deviation, applied to pixel values scaled to [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel.
    pub std: Vec<f32>,
}

impl Normalization {
    /// ImageNet's RGB statistics (the torchvision convention).
    pub fn imagenet() -> Self {
        Self { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] }
    }

    /// ImageNet's statistics for 3 channels; mean 0.5 and deviation 0.5 (values in [-1, 1])
    /// for any other count.
    pub fn default_for(channels: usize) -> Self {
        if channels == 3 { Self::imagenet() } else { Self { mean: vec![0.5; channels], std: vec![0.5; channels] } }
    }

    fn check(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::Config(format!(
                "normalisation has {} means and {} deviations for {channels} channels",
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::Config(format!("normalisation needs finite means and positive deviations: {self:?}")));
        }
        Ok(())
    }
}

/// How each image becomes a tensor row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transform {
    /// The image at its own size (every image of the set must share it), normalised.
    AsIs,
    /// Training augmentation: a random crop of `min_scale..1` of the area with aspect ratio
    /// in 3/4..4/3 (torchvision's RandomResizedCrop), resized to `size`×`size`, flipped
    /// horizontally with probability 1/2, normalised.
    Train {
        /// Output side in pixels.
        size: u32,
        /// Smallest fraction of the image's area a crop may cover (torchvision: 0.08).
        min_scale: f32,
    },
    /// Evaluation: the central square covering 0.875 of the shorter side (resize to
    /// size/0.875, then centre crop), resized to `size`×`size`, normalised.
    Eval {
        /// Output side in pixels.
        size: u32,
    },
}

impl Transform {
    /// torchvision's training augmentation at `size`.
    pub fn train(size: u32) -> Self {
        Transform::Train { size, min_scale: 0.08 }
    }

    /// (height, width) of the output for images of `native` size (`None`: sizes vary).
    pub fn output_size(&self, native: Option<(usize, usize)>) -> Result<(usize, usize)> {
        match *self {
            Transform::AsIs => native.ok_or_else(|| {
                Error::Config("the images differ in size: use a resizing transform (train or eval)".into())
            }),
            Transform::Train { size, min_scale } => {
                if !(min_scale > 0.0 && min_scale <= 1.0) {
                    return Err(Error::Config(format!("crop scale must be in (0, 1], not {min_scale}")));
                }
                Self::check_size(size)
            }
            Transform::Eval { size } => Self::check_size(size),
        }
    }

    fn check_size(size: u32) -> Result<(usize, usize)> {
        if size == 0 || size > 4096 {
            return Err(Error::Config(format!("output size must be in 1..=4096, not {size}")));
        }
        Ok((size as usize, size as usize))
    }

    /// Transforms `img` into `out`, CHW of the output size, drawing random choices from `rng`.
    pub fn apply(&self, img: &RawImage, norm: &Normalization, rng: &mut impl Rng, out: &mut [f32]) -> Result<()> {
        let c = img.channels as usize;
        norm.check(c)?;
        let (w, h) = (img.width, img.height);
        if w == 0 || h == 0 || img.pixels.len() != w as usize * h as usize * c {
            return Err(Error::Config(format!("image of {w}x{h}x{c} holds {} bytes", img.pixels.len())));
        }
        let (oh, ow) = self.output_size(Some((h as usize, w as usize)))?;
        if out.len() != c * oh * ow {
            return Err(Error::Config(format!("output buffer of {} for {c}x{oh}x{ow}", out.len())));
        }
        let (crop, flip) = match *self {
            Transform::AsIs => ((0, 0, w, h), false),
            Transform::Train { min_scale, .. } => (random_resized_crop(w, h, min_scale, rng), rng.random_bool(0.5)),
            Transform::Eval { .. } => {
                let side = ((w.min(h) as f32 * 0.875).round() as u32).max(1);
                (((w - side) / 2, (h - side) / 2, side, side), false)
            }
        };
        let resized = match c {
            1 => crop_resize::<Luma<u8>>(img, crop, ow as u32, oh as u32),
            3 => crop_resize::<Rgb<u8>>(img, crop, ow as u32, oh as u32),
            _ => None,
        }
        .ok_or_else(|| Error::Config(format!("images of {c} channels are not supported")))?;
        let plane = oh * ow;
        for (ch, out_plane) in out.chunks_exact_mut(plane).enumerate() {
            let (scale, shift) = (1.0 / (255.0 * norm.std[ch]), norm.mean[ch] / norm.std[ch]);
            for (y, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
                let row = &resized[y * ow * c..(y + 1) * ow * c];
                for (x, o) in out_row.iter_mut().enumerate() {
                    let sx = if flip { ow - 1 - x } else { x };
                    *o = f32::from(row[sx * c + ch]) * scale - shift;
                }
            }
        }
        Ok(())
    }
}

/// Crops `(x, y, w, h)` out of `img` and resizes it to `ow`×`oh` with a triangle
/// (antialiased bilinear) filter; returns HWC bytes, or `None` if the pixel count is wrong.
pub(crate) fn crop_resize<P: Pixel<Subpixel = u8> + 'static>(
    img: &RawImage,
    (x, y, w, h): (u32, u32, u32, u32),
    ow: u32,
    oh: u32,
) -> Option<Vec<u8>> {
    let c = usize::from(P::CHANNEL_COUNT);
    let (iw, ih) = (img.width as usize, img.height as usize);
    if img.pixels.len() != iw * ih * c || x + w > img.width || y + h > img.height {
        return None;
    }
    if (x, y, w, h) == (0, 0, ow, oh) && (img.width, img.height) == (ow, oh) {
        return Some(img.pixels.clone());
    }
    let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
    let mut crop = Vec::with_capacity(w * h * c);
    for row in img.pixels.chunks_exact(iw * c).skip(y).take(h) {
        crop.extend_from_slice(&row[x * c..(x + w) * c]);
    }
    let crop = ImageBuffer::<P, Vec<u8>>::from_raw(w as u32, h as u32, crop)?;
    Some(imageops::resize(&crop, ow, oh, FilterType::Triangle).into_raw())
}

/// torchvision's RandomResizedCrop parameters for a `w`×`h` image: up to ten tries at an
/// area fraction in `min_scale..1` and a log-uniform aspect ratio in 3/4..4/3, then the
/// central crop of the largest allowed ratio. Returns (x, y, width, height).
fn random_resized_crop(w: u32, h: u32, min_scale: f32, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
    let area = w as f32 * h as f32;
    let (log_lo, log_hi) = ((3.0f32 / 4.0).ln(), (4.0f32 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(min_scale..=1.0);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            return (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch), cw, ch);
        }
    }
    let ratio = w as f32 / h as f32;
    let (cw, ch) = if ratio < 3.0 / 4.0 {
        (w, ((w as f32 / (3.0 / 4.0)).round() as u32).clamp(1, h))
    } else if ratio > 4.0 / 3.0 {
        (((h as f32 * (4.0 / 3.0)).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn as_is_normalises_each_channel() {
        let img = RawImage { width: 2, height: 1, channels: 3, pixels: vec![0, 51, 255, 255, 102, 0] };
        let norm = Normalization { mean: vec![0.5, 0.0, 0.0], std: vec![0.5, 1.0, 2.0] };
        let mut out = vec![0.0; 6];
        Transform::AsIs.apply(&img, &norm, &mut rng(), &mut out).unwrap();
        // CHW: channel 0 = (p/255 - 0.5)/0.5, channel 1 = p/255, channel 2 = p/255/2.
        let want = [-1.0, 1.0, 0.2, 0.4, 0.5, 0.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn eval_crop_of_a_constant_image_is_constant_and_flip_mirrors() {
        let norm = Normalization::default_for(1);
        let img = RawImage { width: 40, height: 30, channels: 1, pixels: vec![255; 1200] };
        let mut out = vec![0.0; 64];
        Transform::Eval { size: 8 }.apply(&img, &norm, &mut rng(), &mut out).unwrap();
        assert!(out.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        // A left-to-right ramp: a training crop is either increasing or (flipped) decreasing
        // along each row, and both happen over a few draws.
        let ramp: Vec<u8> = (0..30).flat_map(|_| (0..40).map(|x| (x * 6) as u8)).collect();
        let img = RawImage { width: 40, height: 30, channels: 1, pixels: ramp };
        let (mut up, mut down) = (0, 0);
        let mut r = rng();
        for _ in 0..20 {
            Transform::train(8).apply(&img, &norm, &mut r, &mut out).unwrap();
            if out[0] < out[7] {
                up += 1;
            } else if out[0] > out[7] {
                down += 1;
            }
        }
        assert!(up > 0 && down > 0 && up + down == 20, "{up} {down}");
    }

    #[test]
    fn crops_stay_inside_the_image() {
        let mut r = rng();
        for (w, h) in [(1, 1), (3, 200), (640, 427), (200, 3)] {
            for _ in 0..200 {
                let (x, y, cw, ch) = random_resized_crop(w, h, 0.08, &mut r);
                assert!(cw > 0 && ch > 0 && x + cw <= w && y + ch <= h, "{w}x{h}: {x} {y} {cw} {ch}");
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let img = RawImage { width: 2, height: 2, channels: 3, pixels: vec![0; 12] };
        let mut out = vec![0.0; 12];
        let norm = Normalization::imagenet();
        assert!(Transform::AsIs.apply(&img, &Normalization::default_for(1), &mut rng(), &mut out).is_err());
        assert!(Transform::Eval { size: 0 }.apply(&img, &norm, &mut rng(), &mut out).is_err());
        assert!(Transform::AsIs.apply(&img, &norm, &mut rng(), &mut out[..5]).is_err());
        let short = RawImage { pixels: vec![0; 11], ..img };
        assert!(Transform::AsIs.apply(&short, &norm, &mut rng(), &mut out).is_err());
        assert!(Transform::AsIs.output_size(None).is_err());
    }
}
