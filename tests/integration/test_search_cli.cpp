// `vitrine index`, `search`, `remove` end to end: updates, bad rows and images, another
// model, and a process killed while indexing.
#include "test_util.h"

#include "vitrine/core/fs.h"
#include "vitrine/search/search_db.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

using namespace vitrine;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

using test::json_lines;
using test::q;

/// A small random model (32-pixel input, 3 classes) in `dir`.
void make_model(const std::string& dir, int seed) {
  std::ofstream(dir + ".labels") << "shoes\nbags\nhats\n";
  const auto r = test::run_command(
      q(test::vitrine_bin()) + " init --arch resnet_custom --layers 1 1 1 1 --image-size 32 " +
      "--labels " + q(dir + ".labels") + " --seed " + std::to_string(seed) + " --out " + q(dir));
  ASSERT_EQ(r.status, 0) << r.err;
}

/// `n` distinct photos and a catalogue CSV naming them.
void make_catalog(const std::string& dir, int n) {
  fs::create_directories(dir + "/img");
  std::mt19937 rng(7);
  std::ofstream csv(dir + "/products.csv");
  csv << "sku,image,title,category,price,seller\n";
  const char* categories[] = {"shoes", "bags", "hats"};
  for (int i = 0; i < n; ++i) {
    cv::Mat m(32, 32, CV_8UC3);
    cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(255));
    const std::string name = "img/p" + std::to_string(i) + ".png";
    cv::imwrite(dir + "/" + name, m);
    csv << "SKU" << i << "," << name << ",Product " << i << "," << categories[i % 3] << ","
        << (10 + i % 90) << ",seller" << i % 5 << "\n";
  }
}

}  // namespace

TEST(SearchCli, IndexUpdatesChangedRowsAndReportsBadOnes) {
  const std::string d = test::temp_dir("search-cli-update");
  make_model(d + "/m", 0);
  make_catalog(d, 30);
  {
    std::ofstream csv(d + "/products.csv", std::ios::app);
    csv << "BAD1,img/missing.png,x,shoes,1,s\n"
        << "BAD2,img/p1.png,x,shoes,cheap,s\n"
        << "PART1,img/p2.png|img/corrupt.png,x,shoes,1,s\n";  // one photo of two is bad
    std::ofstream(d + "/img/corrupt.png") << "not an image";
  }
  const std::string index = q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                            " --catalog " + q(d + "/products.csv") + " --db " + q(d + "/db");
  auto r = test::run_command(index);
  EXPECT_EQ(r.status, 1) << "some rows failed: " << r.err;
  auto lines = json_lines(r.out);
  std::map<std::string, std::string> status;
  for (const auto& l : lines) {
    if (l.contains("sku")) status[l["sku"]] = l["status"];
  }
  EXPECT_EQ(status["SKU0"], "stored");
  EXPECT_EQ(status["BAD1"], "failed");
  EXPECT_EQ(status["PART1"], "stored");
  EXPECT_EQ(status["BAD2"], "failed") << "a bad row's report names its product";
  EXPECT_EQ(std::count_if(lines.begin(), lines.end(),
                          [](const json& l) {
                            return l.value("error", "").find("products.csv:33: price 'cheap'") !=
                                   std::string::npos;
                          }),
            1)
      << r.out;
  // Change one product's title and another's photo: only those two are stored again.
  std::string text;
  {
    std::ifstream in(d + "/products.csv");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text.replace(text.find("Product 4,"), 10, "Renamed 4,");
  std::ofstream(d + "/products.csv") << text;
  cv::Mat m(32, 32, CV_8UC3, cv::Scalar(1, 2, 3));
  cv::imwrite(d + "/img/p5.png", m);
  r = test::run_command(index + " --quiet");
  lines = json_lines(r.out);
  EXPECT_EQ(lines.size(), 3u) << "--quiet prints the failures and PART1, kept without its "
                                  "unreadable photo: " << r.out;
  EXPECT_EQ(r.status, 1);
  r = test::run_command(index);
  status.clear();
  for (const auto& l : json_lines(r.out)) {
    if (l.contains("sku")) status[l["sku"]] = l["status"];
  }
  EXPECT_EQ(status["SKU4"], "unchanged") << "stored by the previous run";
  EXPECT_EQ(status["PART1"], "unchanged") << "its bad photo is reported, not stored again";
  EXPECT_EQ(r.err.find("not in"), std::string::npos) << "every product is in the file: " << r.err;
  // A file without some of the stored products says how many it leaves searchable.
  {
    std::ofstream short_csv(d + "/few.csv");
    short_csv << "sku,image,title,category,price,seller\n"
              << "SKU1,img/p1.png,Product 1,bags,11,seller1\n";  // as stored: unchanged
  }
  const auto few = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                                     " --catalog " + q(d + "/few.csv") + " --db " + q(d + "/db"));
  EXPECT_EQ(few.status, 0) << few.err;
  EXPECT_CONTAINS(few.err, "30 products of the database are not in " + d + "/few.csv");
  // ... and names the first of them, for the `remove` it suggests.
  const size_t remove_at = few.err.find("`vitrine remove --db " + d + "/db SKU");
  ASSERT_NE(remove_at, std::string::npos) << few.err;
  const std::string suggested =
      few.err.substr(remove_at, few.err.find('\n', remove_at) - remove_at);
  EXPECT_EQ(suggested.find(" SKU1 "), std::string::npos) << suggested;
  EXPECT_CONTAINS(suggested, " ...`");
  // A stored product none of whose photos can be read now fails, and stays as it was: said.
  std::ofstream(d + "/gone.csv") << "sku,image,title,category,price,seller\n"
                                 << "SKU2,img/gone.png,Product 2,bags,12,seller2\n";
  const auto gone = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                                      " --catalog " + q(d + "/gone.csv") + " --db " +
                                      q(d + "/db") + " --quiet");
  EXPECT_EQ(gone.status, 1) << gone.err;
  EXPECT_CONTAINS(gone.out, "the product stays searchable as stored before (`vitrine remove --db " +
                                d + "/db SKU2` deletes it)");
  auto db = search::SearchDb::open(d + "/db");
  EXPECT_EQ(db->catalog().find("SKU4")->title, "Renamed 4");
  EXPECT_EQ(db->catalog().product_count(), 31);
  // The changed photo is what search finds now.
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/db") + " --k 1 " +
                        q(d + "/img/p5.png") + " " + q(d + "/img/missing.png"));
  EXPECT_EQ(r.status, 1) << r.err;
  lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["results"][0]["sku"], "SKU5");
  EXPECT_NEAR(lines[0]["results"][0]["score"].get<double>(), 1.0, 1e-4);
  EXPECT_TRUE(lines[1].contains("error"));
  // Removing: unknown SKUs named, the others gone.
  r = test::run_command(q(test::vitrine_bin()) + " remove --db " + q(d + "/db") +
                        " SKU5 NOPE SKU5");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("\"sku\":\"NOPE\",\"status\":\"unknown\""), std::string::npos) << r.out;
  EXPECT_EQ(json_lines(r.out).size(), 2u) << "SKU5 named twice is removed once: " << r.out;
  EXPECT_EQ(json_lines(r.out).at(0)["status"], "removed") << r.out;
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/db") + " --k 1 " +
                        q(d + "/img/p5.png"));
  EXPECT_NE(json_lines(r.out).at(0)["results"][0]["sku"], "SKU5");
  // A mistyped --db is named, and no empty database is left in its place.
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/dbb") + " " +
                        q(d + "/img/p5.png"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("no search database in"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d + "/dbb"));
}

TEST(SearchCli, RouteByCategorySearchesThePredictedCategoriesOrFallsBack) {
  const std::string d = test::temp_dir("search-cli-route");
  make_model(d + "/m", 0);  // its head's labels are the catalogue's categories
  make_catalog(d, 30);
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                             " --catalog " + q(d + "/products.csv") + " --db " + q(d + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string search = q(test::vitrine_bin()) + " search --db " + q(d + "/db") +
                             " --k 5 --route-by-category --route-max 1 " + q(d + "/img/p7.png");
  // Always sure enough: only the top predicted category is searched.
  r = test::run_command(search + " --route-min-score 0");
  ASSERT_EQ(r.status, 0) << r.err;
  auto line = json_lines(r.out).at(0);
  const std::string predicted = line["route"]["top"]["category"];
  ASSERT_EQ(line["route"]["categories"], json::array({predicted}));
  ASSERT_EQ(line["results"].size(), 5u);
  for (const auto& hit : line["results"]) EXPECT_EQ(hit["category"], predicted);
  // The top category is searched even when its probability alone reaches --route-mass.
  r = test::run_command(search + " --route-min-score 0 --route-mass 0");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).at(0)["route"]["categories"], json::array({predicted}));
  // Never sure enough: the whole catalogue, with the reason given.
  r = test::run_command(search + " --route-min-score 1");
  line = json_lines(r.out).at(0);
  EXPECT_TRUE(line["route"].contains("fallback"));
  EXPECT_FALSE(line["route"].contains("categories"));
  EXPECT_EQ(line["results"][0]["sku"], "SKU7") << "its own photo is the best match";
  // A catalogue whose categories the model does not name: routing could never apply.
  std::ofstream(d + "/other.csv") << "sku,image,category\nX1,img/p1.png,nothing\n";
  r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                        " --catalog " + q(d + "/other.csv") + " --db " + q(d + "/db2"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/db2") +
                        " --route-by-category " + q(d + "/img/p7.png"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "is a category of the catalogue");
}

TEST(SearchCli, AnotherModelIsRefusedNotMixed) {
  const std::string d = test::temp_dir("search-cli-model");
  make_model(d + "/a", 0);
  make_model(d + "/b", 1);
  make_catalog(d, 6);
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/a") +
                             " --catalog " + q(d + "/products.csv") + " --db " + q(d + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/b") + " --catalog " +
                        q(d + "/products.csv") + " --db " + q(d + "/db"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "never mixes models");
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/db") + " --model " +
                        q(d + "/b") + " " + q(d + "/img/p0.png"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "was indexed with model");
  // Without --model, search uses the model the database was made with.
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/db") + " " +
                        q(d + "/img/p0.png"));
  EXPECT_EQ(r.status, 0) << r.err;
  // The same folder with new weights (a model retrained in place) is named as changed.
  fs::remove_all(d + "/a");
  make_model(d + "/a", 2);
  r = test::run_command(q(test::vitrine_bin()) + " search --db " + q(d + "/db") + " " +
                        q(d + "/img/p0.png"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "/a but version");
  EXPECT_CONTAINS(r.err, "another directory of that name, or the model retrained or edited");
  EXPECT_CONTAINS(r.err, "search with the model it was indexed with (" + d + "/a)");
  EXPECT_CONTAINS(r.err, "index the catalogue into a new --db");
}

TEST(SearchCli, AProcessKilledWhileIndexingLosesNoProductItReportedAsStored) {
  const std::string d = test::temp_dir("search-cli-kill");
  make_model(d + "/m", 0);
  const int n = 2000;
  make_catalog(d, n);
  int out_pipe[2];
  ASSERT_EQ(pipe(out_pipe), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out_pipe[1], STDOUT_FILENO);
    close(out_pipe[0]);
    const std::string bin = test::vitrine_bin();
    const std::string model = d + "/m", catalog = d + "/products.csv", db = d + "/db";
    execl(bin.c_str(), bin.c_str(), "index", "--model", model.c_str(), "--catalog",
          catalog.c_str(), "--db", db.c_str(), "--batch-size", "4", "--threads", "1",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out_pipe[1]);
  // Read reports until 40 products are stored, then kill the process without warning.
  std::set<std::string> reported;
  std::string buffer;
  char chunk[4096];
  while (reported.size() < 40) {
    const ssize_t got = read(out_pipe[0], chunk, sizeof chunk);
    if (got <= 0) break;
    buffer.append(chunk, static_cast<size_t>(got));
    size_t nl;
    while ((nl = buffer.find('\n')) != std::string::npos) {
      const auto line = json::parse(buffer.substr(0, nl));
      buffer.erase(0, nl + 1);
      if (line.value("status", "") == "stored") reported.insert(line["sku"].get<std::string>());
    }
  }
  kill(pid, SIGKILL);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  close(out_pipe[0]);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the indexer finished before it could be killed";
  ASSERT_GE(reported.size(), 40u);
  {
    auto db = search::SearchDb::open(d + "/db");
    EXPECT_LT(db->catalog().product_count(), n) << "killed part-way";
    const auto indexed = db->index()->ids();
    for (const auto& sku : reported) {
      ASSERT_TRUE(db->catalog().find(sku).has_value()) << sku << " was reported stored";
      for (const auto id : db->catalog().image_ids({search::parse_filter("sku=" + sku)})) {
        EXPECT_TRUE(std::binary_search(indexed.begin(), indexed.end(), id)) << sku;
      }
    }
    EXPECT_EQ(db->catalog().image_ids({}), indexed);
  }
  // Running again completes the catalogue; what was stored is not embedded again.
  const auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                                   " --catalog " + q(d + "/products.csv") + " --db " +
                                   q(d + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  std::map<std::string, std::string> status;
  for (const auto& l : json_lines(r.out)) status[l["sku"]] = l["status"];
  for (const auto& sku : reported) EXPECT_EQ(status[sku], "unchanged") << sku;
  auto db = search::SearchDb::open(d + "/db");
  EXPECT_EQ(db->catalog().product_count(), n);
  EXPECT_EQ(db->index()->size(), n);
}

TEST(SearchCli, EvalRetrievalLeavesEachQueryPhotoOutOfItsOwnResults) {
  const std::string d = test::temp_dir("search-cli-self");
  make_model(d + "/m", 0);
  // Nine products of two unrelated photos each, and one of a single photo; each product's
  // first photo is also a query for it.
  fs::create_directories(d + "/img");
  std::mt19937 rng(3);
  auto photo = [&](const std::string& name) {
    cv::Mat m(32, 32, CV_8UC3);
    cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(255));
    cv::imwrite(d + "/img/" + name, m);
    return "img/" + name;
  };
  std::ofstream csv(d + "/products.csv");
  std::ofstream queries(d + "/queries.csv");
  csv << "sku,images,category\n";
  queries << "image,sku\n";
  for (int i = 0; i < 9; ++i) {
    const std::string first = photo("p" + std::to_string(i) + "a.png");
    csv << "SKU" << i << "," << first << "|" << photo("p" + std::to_string(i) + "b.png")
        << ",shoes\n";
    queries << first << ",SKU" << i << "\n";
  }
  const std::string single = photo("single.png");
  csv << "ONLY," << single << ",bags\n";
  queries << single << ",ONLY\n";
  csv.close();
  queries.close();
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                             " --catalog " + q(d + "/products.csv") + " --db " + q(d + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string eval = q(test::vitrine_bin()) + " eval-retrieval --db " + q(d + "/db") +
                           " --queries " + q(d + "/queries.csv") + " --json " + q(d + "/m.json");
  r = test::run_command(eval);
  ASSERT_EQ(r.status, 0) << r.err;
  auto m = json::parse(read_text_file(d + "/m.json"));
  EXPECT_EQ(m["found_self"], 10);
  EXPECT_EQ(m["only_self"], 1) << "ONLY has nothing to find but its own photo";
  EXPECT_EQ(m["queries"], 9);
  EXPECT_CONTAINS(r.err, "not scored");
  // Each product is still found by its other photo (10 products, 10 results) but rarely
  // first: the query photo no longer finds itself.
  EXPECT_EQ(m["recall_at_10"], 1.0);
  EXPECT_LT(m["recall_at_1"].get<double>(), 0.5);
  r = test::run_command(eval + " --keep-self");
  ASSERT_EQ(r.status, 0) << r.err;
  m = json::parse(read_text_file(d + "/m.json"));
  EXPECT_EQ(m["queries"], 10);
  EXPECT_EQ(m["found_self"], 10);
  EXPECT_EQ(m["recall_at_1"], 1.0);
  // Queries with nothing to find but themselves: no figures to report, an error instead.
  std::ofstream(d + "/only.csv") << "image,sku\n" << single << ",ONLY\n";
  r = test::run_command(q(test::vitrine_bin()) + " eval-retrieval --db " + q(d + "/db") +
                        " --queries " + q(d + "/only.csv"));
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "no query could be scored");
  EXPECT_CONTAINS(r.err, "--keep-self");

  // The query photo stored under another SKU too (a duplicate listing) is a wrong answer,
  // not the query's own photo: it comes first, and Recall@1 says so.
  fs::copy_file(d + "/img/p0a.png", d + "/img/dup.png");
  std::ofstream(d + "/dup.csv") << "sku,images,category\nSKU0,img/p0a.png|img/p0b.png,shoes\n"
                                << "DUP,img/dup.png,shoes\n";
  std::ofstream(d + "/dupq.csv") << "image,sku\nimg/p0a.png,SKU0\n";
  r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                        " --catalog " + q(d + "/dup.csv") + " --db " + q(d + "/dupdb"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = test::run_command(q(test::vitrine_bin()) + " eval-retrieval --db " + q(d + "/dupdb") +
                        " --queries " + q(d + "/dupq.csv") + " --json " + q(d + "/m.json"));
  ASSERT_EQ(r.status, 0) << r.err;
  m = json::parse(read_text_file(d + "/m.json"));
  EXPECT_EQ(m["queries"], 1);
  EXPECT_EQ(m["found_self"], 1);
  EXPECT_EQ(m["recall_at_1"], 0.0) << "DUP's copy of the photo comes first";
  EXPECT_EQ(m["recall_at_5"], 1.0);

  // A data set as queries is hashed as `index --data` hashed it.
  for (const std::string c : {"shoes", "bags"}) {
    fs::create_directories(d + "/set/" + c);
    for (int i = 0; i < 6; ++i) {
      const std::string name = c + std::to_string(i) + ".png";
      fs::rename(d + "/" + photo(name), d + "/set/" + c + "/" + name);
    }
  }
  // A root without test/ has no test split unless one is asked for; no database is left.
  const std::string index_set = q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                                " --data " + q(d + "/set") + " --db " + q(d + "/db3");
  r = test::run_command(index_set + " --split test");
  EXPECT_EQ(r.status, 2);
  EXPECT_CONTAINS(r.err, "--test-split");
  EXPECT_FALSE(fs::exists(d + "/db3"));
  r = test::run_command(index_set + " --split test --test-split 0.5");
  EXPECT_EQ(r.status, 0) << r.err;
  const std::string index_all = q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                                " --data " + q(d + "/set") + " --split all --db " + q(d + "/db2");
  r = test::run_command(index_all);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "12 stored, 0 unchanged, 0 failed");
  // Run again, it embeds only what changed: one photo edited.
  cv::imwrite(d + "/set/shoes/shoes1.png", cv::Mat(20, 20, CV_8UC3, cv::Scalar(9, 99, 199)));
  r = test::run_command(index_all);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "1 stored, 11 unchanged, 0 failed");
  EXPECT_CONTAINS(r.out, "\"status\":\"unchanged\"");
  // The same folder named another way, from another working folder: the same products.
  r = test::run_command("cd " + q(d + "/set/bags") + " && " + q(test::vitrine_bin()) +
                        " index --model ../../m --data ../../set/ --split all --db ../../db2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "0 stored, 12 unchanged, 0 failed");
  EXPECT_CONTAINS(r.out, "\"sku\":\"" + d + "/set/shoes/shoes1.png\"");
  r = test::run_command(q(test::vitrine_bin()) + " eval-retrieval --db " + q(d + "/db2") +
                        " --data " + q(d + "/set") + " --val-split 0.5 --split val --json " +
                        q(d + "/m.json"));
  ASSERT_EQ(r.status, 0) << r.err;
  m = json::parse(read_text_file(d + "/m.json"));
  EXPECT_GT(m["queries"].get<int>(), 0);
  EXPECT_EQ(m["found_self"], m["queries"]);
  // An unreadable photo among the queries fails alone: the others are scored.
  std::ofstream(d + "/set/bags/zz_broken.png") << "not a photo";
  r = test::run_command(q(test::vitrine_bin()) + " eval-retrieval --db " + q(d + "/db2") +
                        " --data " + q(d + "/set") + " --split train --val-split 0 --json " +
                        q(d + "/m.json"));
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_CONTAINS(r.err, "zz_broken.png");
  m = json::parse(read_text_file(d + "/m.json"));
  EXPECT_EQ(m["failed"], 1);
  EXPECT_EQ(m["queries"], 12);
  fs::remove(d + "/set/bags/zz_broken.png");
  // The data set's files as query files are found by their pixels, as `index --data`
  // hashed them: no query answers itself.
  std::ofstream(d + "/setq.csv") << "image,category\n" << d << "/set/shoes/shoes0.png,shoes\n";
  r = test::run_command(q(test::vitrine_bin()) + " eval-retrieval --db " + q(d + "/db2") +
                        " --queries " + q(d + "/setq.csv") + " --json " + q(d + "/m.json"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(read_text_file(d + "/m.json"))["found_self"], 1);
  // A photo moved since leaves its product behind: said, with the command that deletes it.
  EXPECT_EQ(test::run_command(index_all).err.find("not in"), std::string::npos);
  fs::rename(d + "/set/bags/bags5.png", d + "/set/bags/bags5 moved.png");
  r = test::run_command(index_all);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "1 stored, 11 unchanged, 0 failed; the database holds 13 products");
  EXPECT_CONTAINS(r.err, "1 product of the database is not in " + d + "/set (1 with photo "
                         "files that no longer exist: moved or deleted): it stays searchable");
  EXPECT_CONTAINS(r.err, "/set/bags/bags5.png`");
}

TEST(SearchCli, PhotosOfAPackedDataSetAreStoredForTheServiceAndDeletedWithTheirProduct) {
  const std::string d = test::temp_dir("search-cli-packed");
  make_model(d + "/m", 0);
  // A Fashion-MNIST of 3 training and 4 test photos (IDX files, as Zalando ships them).
  fs::create_directories(d + "/fm");
  auto be32 = [](uint32_t v) {
    return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                       static_cast<char>(v >> 8), static_cast<char>(v)};
  };
  std::vector<cv::Mat> test_photos;
  for (const std::string part : {"train", "t10k"}) {
    const uint32_t n = part == "train" ? 3 : 4;
    std::string images = be32(0x803) + be32(n) + be32(28) + be32(28), labels = be32(0x801) + be32(n);
    for (uint32_t i = 0; i < n; ++i) {
      cv::Mat m(28, 28, CV_8UC1);
      cv::randu(m, cv::Scalar::all(0), cv::Scalar::all(255));
      images.append(reinterpret_cast<const char*>(m.data), 28 * 28);
      labels += static_cast<char>(i);
      if (part == "t10k") test_photos.push_back(m);
    }
    std::ofstream(d + "/fm/" + part + "-images-idx3-ubyte", std::ios::binary) << images;
    std::ofstream(d + "/fm/" + part + "-labels-idx1-ubyte", std::ios::binary) << labels;
  }
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                             " --data fashion-mnist --fashion-mnist-dir " + q(d + "/fm") +
                             " --split test --db " + q(d + "/db") + " --quiet");
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<search::Product> products;
  {
    auto db = search::SearchDb::open(d + "/db");
    products = db->catalog().list({}, 0, 100);
  }
  ASSERT_EQ(products.size(), 4u);
  for (size_t i = 0; i < products.size(); ++i) {
    ASSERT_EQ(products[i].images.size(), 1u);
    const std::string& photo = products[i].images[0];
    EXPECT_EQ(fs::path(photo).parent_path(), fs::absolute(d + "/db/images").lexically_normal());
    const cv::Mat back = cv::imread(photo, cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(back.empty()) << photo;
    EXPECT_EQ(cv::norm(back, test_photos[i], cv::NORM_INF), 0.0) << "the photo itself, lossless";
  }
  r = test::run_command(q(test::vitrine_bin()) + " remove --db " + q(d + "/db") + " " +
                        q(products[0].sku));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_FALSE(fs::exists(products[0].images[0]));
  EXPECT_TRUE(fs::exists(products[1].images[0]));
}

TEST(SearchCli, ACatalogueIndexedFromItsOwnFolderNamesPhotosThatWorkFromAnywhere) {
  const std::string d = test::temp_dir("search-cli-relative");
  make_model(d + "/m", 0);
  make_catalog(d, 3);
  // The CSV named by a relative path, its photos relative to it.
  const auto r = test::run_command("cd " + q(d) + " && " + q(test::vitrine_bin()) +
                                   " index --model m --catalog products.csv --db db --quiet");
  ASSERT_EQ(r.status, 0) << r.err;
  auto db = search::SearchDb::open(d + "/db");
  const auto products = db->catalog().list({}, 0, 10);
  ASSERT_EQ(products.size(), 3u);
  for (const auto& p : products) {
    ASSERT_EQ(p.images.size(), 1u);
    EXPECT_TRUE(fs::path(p.images[0]).is_absolute()) << p.images[0];
    EXPECT_TRUE(fs::exists(p.images[0])) << p.images[0];
  }
}

TEST(SearchCli, ADuplicateThresholdOutOfRangeIsNamedWithItsRange) {
  for (const std::string value : {"-1", "1.5", "x"}) {
    const auto r = test::run_command(q(test::vitrine_bin()) + " duplicates --db " +
                                     q(test::temp_dir("search-cli-dup")) + " --threshold " +
                                     value);
    EXPECT_EQ(r.status, 2) << value;
    EXPECT_CONTAINS(r.err, "(-1, 1]");
  }
}

TEST(SearchCli, SearchEffortOutOfRangeIsRefusedBeforeAnyWork) {
  const std::string db = q(test::temp_dir("search-cli-effort"));
  for (const std::string flags : {"search --nprobe 0", "search --ef-search -5",
                                  "search --exact-below -1", "search --threads -3",
                                  "eval-retrieval --nprobe 0", "serve --nprobe 0"}) {
    const auto r = test::run_command(q(test::vitrine_bin()) + " " + flags + " --db " + db +
                                     " --model m x.png");
    EXPECT_EQ(r.status, 2) << flags;
    const std::string flag = flags.substr(flags.find("--"), flags.rfind(' ') - flags.find("--"));
    EXPECT_CONTAINS(r.err, flag);
    EXPECT_EQ(r.err.find("faiss"), std::string::npos) << r.err;
  }
}

TEST(SearchCli, DuplicatesWarnsWhenAGroupIsTooLargeToBeCopies) {
  const std::string d = test::temp_dir("search-cli-dup-large");
  make_model(d + "/m", 0);
  make_catalog(d, 24);
  // Two photos listed under two SKUs each: two groups of two, no warning.
  std::ofstream(d + "/products.csv", std::ios::app) << "C0,img/p0.png,Copy,shoes,10,x\n"
                                                    << "C1,img/p1.png,Copy,bags,10,x\n";
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                             " --catalog " + q(d + "/products.csv") + " --db " + q(d + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string dup = q(test::vitrine_bin()) + " duplicates --db " + q(d + "/db");
  r = test::run_command(dup + " --threshold 0.9999");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 2u) << r.out;
  EXPECT_EQ(r.err.find("largest group"), std::string::npos) << r.err;
  // A threshold below everything links the whole catalogue: said.
  r = test::run_command(dup + " --threshold -0.99 --neighbours 30");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "the largest group holds 26 photos");
  EXPECT_CONTAINS(r.err, "raise --threshold");
  fs::remove_all(d);
}

TEST(SearchCli, AnIndexRebuiltBySearchIsSavedForTheNextCommand) {
  const std::string d = test::temp_dir("search-cli-rebuilt");
  make_model(d + "/m", 0);
  make_catalog(d, 6);
  auto r = test::run_command(q(test::vitrine_bin()) + " index --model " + q(d + "/m") +
                             " --catalog " + q(d + "/products.csv") + " --db " + q(d + "/db"));
  ASSERT_EQ(r.status, 0) << r.err;
  fs::remove(d + "/db/vectors.index");  // as after an indexing run killed before it saved
  const std::string search =
      q(test::vitrine_bin()) + " search --db " + q(d + "/db") + " " + q(d + "/img/p1.png");
  r = test::run_command(search);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_CONTAINS(r.err, "building the flat index");
  EXPECT_CONTAINS(r.err, "saved the rebuilt index");
  EXPECT_TRUE(fs::exists(d + "/db/vectors.index"));
  r = test::run_command(search);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err.find("building"), std::string::npos) << r.err;
  EXPECT_EQ(json_lines(r.out).at(0)["results"][0]["sku"], "SKU1");
  fs::remove_all(d);
}
