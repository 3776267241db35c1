"""The dashboard's static assets (CSS and JavaScript), shipped in the package: no CDN, no
build step, nothing fetched at run time. `gateway.api.dashboard` serves them."""
