"""Shared fixtures: an isolated environment for every test."""

import os

import pytest


@pytest.fixture
def env(tmp_path):
    """A minimal environment: a temp HOME and Docker config, no cluster variables."""
    home = tmp_path / "home"
    home.mkdir()
    docker = tmp_path / "docker"
    docker.mkdir()
    return {"HOME": str(home), "DOCKER_CONFIG": str(docker),
            "PATH": os.environ.get("PATH", os.defpath)}
