FROM python:3.11-slim
WORKDIR /app
# Dependencies first (own layer, rebuilt only when the lock changes). Every file pip downloads here is
# checked against a sha256 in requirements.lock, pip and setuptools included; see README "Supply chain".
COPY requirements.lock ./
RUN python -m pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY integrations ./integrations
# The project itself: no dependency resolution, and built with the locked setuptools (no build isolation,
# so nothing unpinned is fetched for the build). pip check fails the build if the lock no longer covers pyproject.toml.
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation . && python -m pip check \
    && useradd --create-home pbxrelay && mkdir -p /app/var/metrics && chown -R pbxrelay /app/var
USER pbxrelay
ENV PBXRELAY_VAR_DIR=/app/var
EXPOSE 8000
CMD ["pbxrelay", "web", "--host", "0.0.0.0", "--port", "8000"]
