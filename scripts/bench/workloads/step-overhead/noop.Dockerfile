# step-overhead baseline: the same build as ./Dockerfile without the RUN step.
ARG BASE_REGISTRY=localhost:5000
FROM ${BASE_REGISTRY}/busybox:latest
LABEL bench=noop
