# One image for the gateway, ingest, train and view services and the `digits` command.
#   docker build -t digits:local .                      (CPU)
#   docker build -t digits:gpu --build-arg GPU=1 .      (TensorFlow with CUDA, for train)
FROM python:3.11-slim AS build
ARG GPU=0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY digits ./digits
COPY gateway ./gateway
COPY ingest_service ./ingest_service
COPY train_service ./train_service
COPY view_service ./view_service
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[all]" \
 && if [ "$GPU" = "1" ]; then pip wheel --no-cache-dir --wheel-dir /wheels "tensorflow[and-cuda]"; fi

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --home-dir /var/lib/digits digits
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/digits
ENV PYTHONUNBUFFERED=1 \
    DIGITS_DATA_DIR=/var/lib/digits \
    DIGITS_HEALTH_HOST=0.0.0.0 \
    DIGITS_HEALTH_PORT=8080
EXPOSE 5000 8080
# Each service is `python -m <service>`; compose and k8s say which.
CMD ["digits", "--help"]
