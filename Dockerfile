# syntax=docker/dockerfile:1
# Build stage: a wheel of podgrace and its dependencies, built once.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: no compiler, no pip cache, a numeric non-root user, a read-only root filesystem works
# (Kopf and prometheus-client write nothing outside /tmp, which the chart mounts as an emptyDir).
FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels podgrace && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["podgrace"]
CMD ["run", "--all-namespaces"]
