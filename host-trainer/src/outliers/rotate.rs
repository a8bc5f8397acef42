//! Rotation outliers for semantic one-class data (the FIRM reference's CIFAR/Fashion-MNIST setup):
//! an ID image rotated by 90, 180 or 270 degrees is a "shifted" sample with label 1, 2 or 3.

pub use firm_shared::preprocess::rotate;

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    #[test]
    fn quarter_turns_move_corners_counter_clockwise() {
        // 3 x 2 image with a marked top-right pixel.
        let mut img = RgbImage::new(3, 2);
        img.put_pixel(2, 0, Rgb([255, 0, 0]));
        let r1 = rotate(&img, 1);
        assert_eq!(r1.dimensions(), (2, 3));
        // Counter-clockwise: the top-right corner goes to the top-left.
        assert_eq!(r1.get_pixel(0, 0).0, [255, 0, 0]);
        let r2 = rotate(&img, 2);
        assert_eq!(
            r2.get_pixel(0, 1).0,
            [255, 0, 0],
            "180: top-right -> bottom-left"
        );
        let r3 = rotate(&img, 3);
        assert_eq!(
            r3.get_pixel(1, 2).0,
            [255, 0, 0],
            "270: top-right -> bottom-right"
        );
        assert_eq!(rotate(&rotate(&img, 1), 3), img);
        assert_eq!(rotate(&img, 4), img);
    }
}
