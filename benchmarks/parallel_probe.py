"""How much two independent CPU-bound processes get on this VM against one: the ceiling of any 2-worker speedup."""
import multiprocessing as mp, os, time, statistics, json

def work(seconds_out, n=60):
    import torch
    torch.set_num_threads(1)
    from bastion.models import load_model
    model = load_model("mnist-cnn-robust").module
    x = torch.rand(128, 1, 28, 28, requires_grad=True)
    for _ in range(5):
        model(x).sum().backward()
    t = time.perf_counter()
    for _ in range(n):
        model(x).sum().backward()
    seconds_out.put(time.perf_counter() - t)

def run(k):
    q = mp.Queue()
    ps = [mp.Process(target=work, args=(q,)) for _ in range(k)]
    [p.start() for p in ps]; [p.join() for p in ps]
    times = [q.get() for _ in range(k)]
    return k * 60 / max(times)  # forward+backward batches per second, all processes together

if __name__ == "__main__":
    mp.set_start_method("spawn")
    one, two = [], []
    for _ in range(3):
        one.append(run(1)); two.append(run(2))
    r = statistics.median(two) / statistics.median(one)
    print(json.dumps({"one_process_batches_per_s": round(statistics.median(one), 2),
                      "two_processes_batches_per_s": round(statistics.median(two), 2), "ratio": round(r, 3),
                      "load": os.getloadavg()}))
