FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY integrations ./integrations
RUN pip install --no-cache-dir . && useradd --create-home pbxrelay && mkdir -p /app/var && chown pbxrelay /app/var
USER pbxrelay
ENV PBXRELAY_VAR_DIR=/app/var
EXPOSE 8000
CMD ["pbxrelay", "web", "--host", "0.0.0.0", "--port", "8000"]
