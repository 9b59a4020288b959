"""Plots of images with catalogs on WCS axes."""

import numpy as np

__all__ = ["plot_catalog"]


def plot_catalog(image, cat, truth=None, filename=None, title=None):
    """Show an image (band sum) on WCS axes with catalog and optional truth markers.

    Parameters
    ----------
    image : `~astro_asid.SkyImage`
        The image.
    cat : `~astropy.table.QTable`
        A catalog from `~astro_asid.find_sources`.
    truth : `~astropy.coordinates.SkyCoord`, optional
        True positions to mark.
    filename : str, optional
        Save the figure there (PNG).

    Returns
    -------
    `matplotlib.figure.Figure`
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval

    data = image.band_sum()
    fig = plt.figure(figsize=(7, 6))
    ax = fig.add_subplot(projection=image.wcs) if image.wcs is not None else fig.add_subplot()
    norm = ImageNormalize(data, interval=PercentileInterval(99.5), stretch=AsinhStretch(0.1))
    ax.imshow(np.where(image.mask2d, np.nan, data), origin="lower", cmap="magma", norm=norm)
    if truth is not None and len(truth):
        ax.scatter(truth.spherical.lon.deg, truth.spherical.lat.deg,
                   transform=ax.get_transform(truth.frame.name) if image.wcs is not None else None,
                   s=90, facecolor="none", edgecolor="cyan", lw=1, label="truth")
    if len(cat):
        ax.scatter(np.asarray(cat["x_centroid"]), np.asarray(cat["y_centroid"]), marker="+",
                   s=60, color="lime", lw=1.2, label=f"{cat.meta.get('detector', 'found')}")
    ax.legend(loc="upper right", fontsize=8)
    if image.wcs is not None:
        ax.coords[0].set_axislabel(image.wcs.wcs.ctype[0].split("-")[0])
        ax.coords[1].set_axislabel(image.wcs.wcs.ctype[1].split("-")[0])
    ax.set_title(title or f"{len(cat)} sources")
    if filename:
        fig.savefig(filename, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig
