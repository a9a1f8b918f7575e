#!/usr/bin/env bash
# A photo folder for the "more scenes" experiment of docs/quality.md: scikit-image's 14 bundled
# photos plus 22 photographs from two Debian wallpaper packages, downscaled to a 512 px short side.
# (Measured there: a bank of these photos trained a model that ranked held-out restorations *worse*
# than the bundled photos alone, so recipes/configs/quality_cpu.yaml does not use it.)
#   Licences (Debian main, so free to use and redistribute): plasma-workspace-wallpapers is
#   LGPL-3 / CC-BY-SA-4.0 per image (its metadata.json), mate-backgrounds GPL-2+ (its copyright
#   file). The photos are training data; keep their notices if you redistribute them.
# Usage (needs apt-get and dpkg-deb, no root):
#   bash benchmarks/wallpaper_photos.sh [OUT=runs/photos_wallpapers]
# then: drqa data build --photos OUT ... (the command is in docs/quality.md).
set -euo pipefail
out="${1:-runs/photos_wallpapers}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Photographs only: the packages' renders, abstracts and near-empty gradients are left out.
plasma=(BytheWater ColdRipple ColorfulCups EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am)
mate=(Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower)

(cd "$work" && apt-get download -q plasma-workspace-wallpapers mate-backgrounds)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
mkdir "$work/stage"
for name in "${plasma[@]}"; do
    # A Plasma wallpaper ships one photo at several resolutions: take the largest file.
    src="$(ls -S "$work/root/usr/share/wallpapers/$name/contents/images/"* | head -n 1)"
    cp "$src" "$work/stage/$name.${src##*.}"
done
for name in "${mate[@]}"; do
    cp "$work/root/usr/share/backgrounds/mate/nature/$name.jpg" "$work/stage/"
done
drqa data photos --bundled --from "$work/stage" --out "$out" --short-side 512
