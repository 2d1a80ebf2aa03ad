# The usagebox code location (Dagster gRPC server, run and step pods), tables on S3.
FROM python:3.11-slim

# WeasyPrint renders invoice PDFs with Pango.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/usagebox
COPY pyproject.toml README.md ./
COPY usagebox_pipelines ./usagebox_pipelines
COPY usagebox_demo ./usagebox_demo
RUN pip install --no-cache-dir ".[deploy]"

RUN useradd --create-home usagebox
USER usagebox
ENV DAGSTER_HOME=/tmp/dagster USAGEBOX_EXECUTOR=k8s
EXPOSE 3030
CMD ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", "3030", "-m", "usagebox_pipelines.definitions"]
