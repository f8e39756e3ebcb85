COMMANDS = ["plan", "prepare", "train", "eval", "export", "report", "demo"]


def test_help_lists_the_seven_commands(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for name in COMMANDS:
        assert name in out


def test_bad_override_is_one_line_exit_2(cli):
    for arg, key in [("model.n_layers=abc", "model.n_layers"), ("nosuch.key=1", "nosuch.key")]:
        code, out, err = cli("train", arg)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and key in lines[0] and "Traceback" not in err


def test_train_without_data_dir_is_a_user_error(cli):
    code, _, err = cli("train")
    assert code == 2 and "DATA_DIR" in err


def test_unknown_option_is_a_usage_error_not_an_internal_one(cli):
    code, _, err = cli("export", "somewhere", "--out", "elsewhere")
    assert code == 2
    assert "No such option: --out" in err and "internal error" not in err
