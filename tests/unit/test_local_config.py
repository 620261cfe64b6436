"""`tailgate up`'s choices: ports and the number of local backends over the embedded config."""

import pytest

from gateway.cli import main
from gateway.config import default_config_text, parse_config
from gateway.local import local_backends, local_config

EMBEDDED = parse_config(default_config_text())


def test_no_choice_keeps_the_embedded_config() -> None:
    assert local_config(EMBEDDED) == EMBEDDED
    assert local_backends(3, 8001) == EMBEDDED.backends  # the same three, named alike


def test_ports_and_backends_are_replaced() -> None:
    config = local_config(EMBEDDED, port=18080, admin_port=19901, backends=2, backend_port=18001)
    assert (config.listen.port, config.admin.port) == (18080, 19901)
    assert [b.url for b in config.backends] == ["http://127.0.0.1:18001", "http://127.0.0.1:18002"]
    assert [b.name for b in config.backends] == ["backend-1", "backend-2"]
    assert config.balancer == EMBEDDED.balancer


def test_a_count_alone_keeps_the_first_port_and_a_port_alone_keeps_the_count() -> None:
    more = local_config(EMBEDDED, backends=5)
    assert [b.url for b in more.backends][-1] == "http://127.0.0.1:8005"
    moved = local_config(EMBEDDED, backend_port=9001)
    assert [b.url for b in moved.backends] == [f"http://127.0.0.1:{9001 + i}" for i in range(3)]


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--port", "0"],
        ["up", "--port", "70000"],
        ["up", "--backends", "0"],
        ["up", "--backends", "two"],
    ],
)
def test_bad_choices_are_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "tailgate up: error: argument" in capsys.readouterr().err


def test_port_choices_do_not_mix_with_a_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["up", "--config", "gateway.yaml", "--port", "8090", "--backends", "2"])
    assert exit_.value.code == 2
    assert "--port, --backends change the embedded config" in capsys.readouterr().err
