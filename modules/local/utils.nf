/*
 * Helpers shared by the exo2micro process modules.
 *
 * Functions only: no processes, no params. Included by each module with
 *     include { shellQuote; paramOptions; stageStatusHandler } from '../utils'
 */

// Quote a value for bash: 'value', with embedded single quotes escaped.
def shellQuote(value) {
    return "'" + value.toString().replace("'", "'\\''") + "'"
}

// A pair's own image facts (meta.image: samplesheet columns) as the stage tools' options of the
// same names: pixel_size_um -> --pixel-size-um '0.5'.
def imageOptions(meta) {
    return (meta.image ?: [:]).collect { name, value -> "--${name.replace('_', '-')} ${shellQuote(value)}" }.join(' ')
}

// Pipeline parameters (name -> value) as repeated `--param name=value` options.
// Null values are left out: the tool then uses the registry default (exo2micro/params.py).
def paramOptions(values) {
    return values
        .findAll { _name, value -> value != null }
        .collect { name, value -> '--param ' + shellQuote("${name}=${value}") }
        .join(' ')
}

/*
 * Bash run after a stage tool; expects $e2m_status (the tool's exit code), $e2m_attempt and
 * $e2m_record (the stage record prefix, e.g. stages/01_load) and the tool's stderr in e2m.err
 * (also copied to the task's .command.err as it is written). Exit codes: README.md.
 *
 *  - exit 0 and a stage record written: success.
 *  - exit 65 (bad input data) or 2 (a refused parameter): deterministic, so the failure is a
 *    result: it is written to failure.tsv (exit code, attempt, message) and the task ends with 0;
 *    the summary reports the reason, the other pairs go on and -resume does not repeat it.
 *  - any other exit (137 and the other kill codes, 1 internal error, 70 no stage record, 127 tool
 *    not found, ...): the task fails with that code. errorStrategy (conf/base.config) retries it
 *    with more memory and time; nothing is cached, so -resume runs it again once fixed.
 */
def stageStatusHandler() {
    return '''
    if [ "$e2m_status" -eq 0 ] && ! ls "$e2m_record"*.json >/dev/null 2>&1; then
        echo "internal error: the tool exited 0 but wrote no ${e2m_record}*.json stage record" | tee -a e2m.err >&2
        exit 70
    fi
    case "$e2m_status" in
        0) ;;
        2|65)
            e2m_message=$( { grep -E '^(error|internal error): ' e2m.err || true; } | tail -n 1 )
            if [ -z "$e2m_message" ]; then
                e2m_message=$( { grep -v '^[[:space:]]*$' e2m.err || true; } | tail -n 1 )
            fi
            if [ -z "$e2m_message" ]; then
                e2m_message="exited with code $e2m_status and no message"
            fi
            printf '%s\\t%s\\t%s\\n' "$e2m_status" "$e2m_attempt" "$(printf '%s' "$e2m_message" | tr '\\t\\r\\n' '   ')" > failure.tsv
            ;;
        *) exit "$e2m_status" ;;
    esac
    '''.stripIndent()
}

// Bash that copies (not links: containers may not see other work directories) what report.html
// shows: result.json and every stage's pipeline_output/*.png, into e2m_pair/.
def reportBundle() {
    return '''
    if [ -f result.json ]; then
        mkdir -p e2m_pair/pipeline_output
        cp -L result.json e2m_pair/result.json
        for png in pipeline_output/*.png; do
            if [ -e "$png" ]; then cp -L "$png" e2m_pair/pipeline_output/; fi
        done
    fi
    '''.stripIndent()
}
