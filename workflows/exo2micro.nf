/*
 * The per-pair pipeline: load -> align-boundary -> align-interior -> subtract -> detect, then the
 * summary.
 *
 * Every stage runs in its own work directory. It gets the outputs of the earlier stages of its
 * pair staged under their pair-folder names (tiff/, cache/, fits/, transforms/, stages/), runs its
 * tool with --pair-dir ., and emits only the files it wrote itself; the workflow adds them to the
 * pair's accumulated state for the next stage. publishDir (conf/modules.config) copies each
 * stage's files to <outdir>/<sample>/<dye>/, so the published tree equals the local runner's.
 *
 * Failed pairs never stop the others (see docs/usage.md, "Failed pairs"):
 *   - a deterministic failure (bad input, exit 65, ...) is recorded by the stage in failure.tsv;
 *   - a pair killed on its last attempt (out of memory / time) leaves no record: it is found as a
 *     pair that stopped before stage 4 without one, and reported with the stage it did not finish.
 */
include { LOAD           } from '../modules/local/load'
include { ALIGN_BOUNDARY } from '../modules/local/align_boundary'
include { ALIGN_INTERIOR } from '../modules/local/align_interior'
include { SUBTRACT       } from '../modules/local/subtract'
include { DETECT         } from '../modules/local/detect'
include { SUMMARY        } from '../modules/local/summary'
// Generated from the package (exo2micro/nfconstants.py): the stage names, the resolved
// samplesheet's columns that are not extra metadata, and those that give one pair's own image
// facts (docs/usage.md, "A samplesheet"; every stage tool takes them as options of the same
// names: --pixel-size-um, ...).
include { stageNames; reservedColumns; imageColumns } from '../modules/local/constants'

// [column: value] of a row's non-empty image columns.
def imageFacts(row) {
    return imageColumns().findAll { column -> row[column] }.collectEntries { column -> [column, row[column]] }
}

/*
 * One samplesheet row -> [ meta, pre, post ]. Extra columns go to meta.extra (-> result.json);
 * the image columns also to meta.image (imageFacts), which every stage passes to its tool
 * (utils imageOptions): a changed value changes the pair's task inputs, so -resume re-runs it.
 * meta.code is the code version (main.nf codeVersion), an input of every task for -resume.
 * Image paths are resolved to their real location: DISCOVER saw the raw directory through a link
 * in its own work folder, which changes from run to run (it is never cached), and the stage tasks
 * must see the same input paths on every run for -resume to reuse them.
 */
def pairFromRow(row, code) {
    def reserved = reservedColumns()
    def meta = [
        id: "${row.sample}/${row.dye}".toString(),
        sample: row.sample,
        dye: row.dye,
        code: code,
        mem_bytes: row.mem_bytes ? Math.ceil(row.mem_bytes.toDouble()) as long : null,
        time_s: row.time_s ? Math.ceil(row.time_s.toDouble()) as long : null,
        extra: row.findAll { key, _value -> !(key in reserved) },
        image: imageFacts(row),
    ]
    def pre = file(row.pre, checkIfExists: true).toRealPath()
    def post = file(row.post, checkIfExists: true).toRealPath()
    return [meta, pre, post]
}

def asList(value) {
    return value instanceof List ? value : [value]
}

/*
 * The state of a pair: [ meta, tiff, cache, fits, transforms, pipeline_output, stages ] (lists of
 * files). [meta, state lists of the earlier stages] joined with [meta, lists of one stage]
 * -> [meta, merged lists].
 */
def mergeState(row) {
    def merged = [0, 1, 2, 3, 4, 5].collect { i -> asList(row[1 + i]) + asList(row[7 + i]) }
    return [row[0]] + merged
}

// A stage's state row holds its stage record (7th element) when the stage succeeded; a stage
// that recorded a failure (failure.tsv) emits an empty one, and its pair stops there.
def hasRecord(row) {
    return !asList(row[6]).isEmpty()
}

def failureHeader() {
    return ['sample', 'dye', 'stage', 'exit_code', 'attempts', 'reason'].join('\t')
}

def stageName(stage) {
    return stageNames()[stage - 1]
}

/*
 * Rows of failures.tsv (sample, dye, stage, exit_code, attempts, reason; stage 1-5), read by
 * `e2m-summary --failures`. A failure recorded by a stage (failure.tsv: exit code, attempt,
 * message):
 */
def recordedFailureRow(meta, stage, record) {
    def fields = record.text.trim().split('\t', 3)
    def message = fields.size() > 2 ? fields[2] : 'no message'
    def reason = "${stageName(stage)} failed: ${message.replaceFirst('^error: ', '')}"
    return [meta.sample, meta.dye, stage, fields[0], fields[1], reason].join('\t')
}

// A pair that stopped before stage 5 without a record: its task was killed on its last attempt
// (errorStrategy ignores only the kill codes). Its exit code is in the trace, not here (empty).
def killedRow(meta, stages_done, max_retries) {
    def stage = stages_done + 1
    def attempts = max_retries + 1
    def reason = "${stageName(stage)} did not finish: its task was killed on the last of " +
        "${attempts} attempts (out of memory, time limit or a signal); the exit code of each " +
        "attempt is in pipeline_info/execution_trace_*.txt. Nothing of it is cached: give it " +
        "more memory or time and run again with -resume."
    return [meta.sample, meta.dye, stage, '', attempts, reason].join('\t')
}

workflow EXO2MICRO {

    take:
    ch_samplesheet    // channel: [ meta, pairs.csv ]  resolved samplesheet from DISCOVER (meta.code: code version)
    ch_skipped        // channel: [ meta, skipped.tsv ]
    stage_params      // map: stage number (1-5) -> [ name: value ] of the parameters of stages <= it
    checkpoint_format // string: tiff, fits or both
    max_retries       // integer: retries of a killed task (memory and time grow with each attempt)
    provenance        // map: code version, commit, container, ... for manifest.json

    main:
    ch_pairs = ch_samplesheet
        .flatMap { meta, csv -> csv.splitCsv(header: true, strip: true).collect { row -> [row, meta.code] } }
        .map { row, code -> pairFromRow(row, code) }

    LOAD(ch_pairs, stage_params[1], checkpoint_format)
    ch_done1 = LOAD.out.state.filter { row -> hasRecord(row) }
    ch_state1 = ch_done1

    ALIGN_BOUNDARY(ch_state1, stage_params[2], checkpoint_format)
    ch_done2 = ALIGN_BOUNDARY.out.state.filter { row -> hasRecord(row) }
    ch_state2 = ch_state1.join(ch_done2).map { row -> mergeState(row) }

    ALIGN_INTERIOR(ch_state2, stage_params[3], checkpoint_format)
    ch_done3 = ALIGN_INTERIOR.out.state.filter { row -> hasRecord(row) }
    ch_state3 = ch_state2.join(ch_done3).map { row -> mergeState(row) }

    SUBTRACT(ch_state3, stage_params[4], checkpoint_format)
    ch_done4 = SUBTRACT.out.state.filter { row -> hasRecord(row) }
    ch_state4 = ch_state3.join(ch_done4).map { row -> mergeState(row) }

    DETECT(ch_state4, stage_params[5], checkpoint_format)

    // -- failures: recorded by a stage, or inferred for pairs killed on their last attempt
    ch_recorded = LOAD.out.failure.map { meta, record -> [meta, 1, record] }
        .mix(
            ALIGN_BOUNDARY.out.failure.map { meta, record -> [meta, 2, record] },
            ALIGN_INTERIOR.out.failure.map { meta, record -> [meta, 3, record] },
            SUBTRACT.out.failure.map { meta, record -> [meta, 4, record] },
            DETECT.out.failure.map { meta, record -> [meta, 5, record] },
        )

    // progress marks per pair: 0 = discovered, k = stage k done, -1 = failure recorded
    ch_killed = ch_pairs.map { meta, _pre, _post -> [meta, 0] }
        .mix(
            ch_done1.map { row -> [row[0], 1] },
            ch_done2.map { row -> [row[0], 2] },
            ch_done3.map { row -> [row[0], 3] },
            ch_done4.map { row -> [row[0], 4] },
            DETECT.out.result.map { meta, _json -> [meta, 5] },
            ch_recorded.map { meta, _stage, _record -> [meta, -1] },
        )
        .groupTuple()
        .filter { _meta, marks -> !(5 in marks) && !(-1 in marks) }
        .map { meta, marks -> killedRow(meta, marks.max(), max_retries) }

    ch_failures = ch_recorded
        .map { meta, stage, record -> recordedFailureRow(meta, stage, record) }
        .mix(ch_killed)
        .collect(sort: true)
        .map { rows -> ([failureHeader()] + rows).join('\n') + '\n' }
        .collectFile(name: 'failures.tsv')
        .ifEmpty([])

    // per finished pair: a folder with result.json and the plots (for report.html)
    ch_reports = DETECT.out.report
        .map { _meta, folder -> folder }
        .collect(sort: true)
        .ifEmpty([])

    SUMMARY(ch_samplesheet.join(ch_skipped), ch_failures, ch_reports, provenance)

    emit:
    summary  = SUMMARY.out.tsv      // channel: [ meta, summary.tsv ]
    report   = SUMMARY.out.html     // channel: [ meta, report.html ]
    versions = SUMMARY.out.versions // channel: [ meta, versions.yml ] software of the tasks
    results  = DETECT.out.result    // channel: [ meta, result.json ] per completed pair
}
